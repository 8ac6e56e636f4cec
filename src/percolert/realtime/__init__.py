"""The sockets on this instance: the hub (each user's open sockets, their bounded queues
and writers), an alert encoded once for all of its recipients' sockets (`delivery`), and
frames built once for many sockets with the scope extension a server may offer to write them
(`frames`); or, instead of sockets here, alerts published to a Centrifugo server's
personal channels (`centrifugo`). Knows no Elasticsearch and no server: frames are built
here, written by `percolert.server`. May import `core` only."""
