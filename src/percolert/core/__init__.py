"""What every layer shares and that speaks to nothing outside the process: settings from
the environment, the wire messages, shared records, text normalisation, NDJSON
reading, assets beside the code, metrics, the supervisor of background loops, requests sent
together (`batching`), the state directory's secrets. May import nothing of percolert
outside `core`."""
