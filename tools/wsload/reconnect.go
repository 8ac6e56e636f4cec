package main

// Reconnect rounds: with the spec's `reconnect`, each SIGUSR1 starts a round that closes a
// share of the sockets abruptly (no close frame, as a dropped network would), keeps each away
// a while and resumes it where its stream stood: Percolert's `/ws?after=SEQ` (the newest seq
// the socket saw), Centrifugo's connect (or subscribe) with `recover` and the last offset and
// epoch. The record says what happened on those sockets, for the harness to count what was
// missed and what came twice:
//
//	<search> <epoch s> <seq> <socket> c<n>|r<n>   an alert on connection n (c) or replayed by its greeting (r)
//	!dropped <epoch s> <position> <socket> c<n>    connection n closed by the round
//	!resumed <epoch s> <position> <socket> c<n>[+recovered|+unrecovered]   connection n greeted
//	!unresumed <epoch s> 0 <socket> c<n>           connection n never greeted (reason on stderr)
//	!round <epoch s> <sockets dropped> -1 -        the round's last drop is done
//
// A position is the seq a Percolert socket resumes after, or a Centrifugo socket's offset;
// `+recovered` is the server's own word on the recovery (Centrifugo's connect reply, Percolert's
// hello; none from a Percolert too old to say). Nothing
// is deduplicated: an alert that comes twice is recorded twice.

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

type reconnectSpec struct {
	// Share of the sockets dropped by each round, evenly spaced (see droppedSockets).
	Share float64 `json:"share"`
	// From the signal to the first drop, and the window the drops are spread over.
	DelayS  float64 `json:"delay_s"`
	SpreadS float64 `json:"spread_s"`
	// How long each dropped socket stays away before it reconnects.
	AwayS float64 `json:"away_s"`
}

const (
	droppedMark   = "!dropped"
	resumedMark   = "!resumed"
	unresumedMark = "!unresumed"
	roundMark     = "!round"
)

// dropsSocket says whether rounds drop the run's socket i: when ⌊(i+1)·share⌋ passes
// ⌊i·share⌋, which spreads them evenly (every tenth at 0.1).
func dropsSocket(i int, share float64) bool {
	return math.Floor(float64(i+1)*share+1e-9) > math.Floor(float64(i)*share+1e-9)
}

// droppedSockets are the sockets of `count` a round drops.
func droppedSockets(count int, share float64) []int {
	var chosen []int
	for i := 0; i < count; i++ {
		if dropsSocket(i, share) {
			chosen = append(chosen, i)
		}
	}
	return chosen
}

// position is where a socket's stream stands: what a resume asks for.
type position struct {
	seq     int64  // Percolert: the newest seq seen (or the hello's last_seq)
	channel string // Centrifugo: the subscription, its epoch and the newest offset seen
	epoch   string
	offset  uint64
}

// resumeURL is a Percolert socket's URL resuming after `seq`.
func resumeURL(url string, seq int64) string {
	if strings.Contains(url, "?") {
		return fmt.Sprintf("%s&after=%d", url, seq)
	}
	return fmt.Sprintf("%s?after=%d", url, seq)
}

// connectionTag names connection n of a socket in the record; replayed: what its greeting
// replayed rather than what came live.
func connectionTag(replayed bool, connection int) string {
	if replayed {
		return fmt.Sprintf("r%d", connection)
	}
	return fmt.Sprintf("c%d", connection)
}

var offsetKey = []byte(`"offset":`)

// pubOffset is the offset of a Centrifugo publication push (0 without one). Centrifugo writes
// a publication's fields in order, the offset after the data: the last unescaped `"offset":`
// of the line is the publication's (Percolert's alerts have no such key, and a string
// value's quotes would be escaped).
func pubOffset(line []byte) uint64 {
	at := bytes.LastIndex(line, offsetKey)
	if at < 0 {
		return 0
	}
	var offset uint64
	for i := at + len(offsetKey); i < len(line) && line[i] >= '0' && line[i] <= '9'; i++ {
		offset = offset*10 + uint64(line[i]-'0')
	}
	return offset
}

// tracker is a socket that rounds may drop. The round's goroutine closes its connection;
// the socket's own goroutine owns the rest (position, connection number).
type tracker struct {
	index int

	mu       sync.Mutex
	conn     *websocket.Conn // nil while away
	dropping bool            // closed by a round, not by the server

	pos        position
	connection int   // 0 for the first, then one more per resume
	replayUpTo int64 // Percolert: on a resumed connection, alerts up to this seq are replayed
}

func (t *tracker) attach(conn *websocket.Conn) {
	t.mu.Lock()
	t.conn, t.dropping = conn, false
	t.mu.Unlock()
}

// drop closes the current connection abruptly; false when the socket is away already.
func (t *tracker) drop() bool {
	t.mu.Lock()
	conn := t.conn
	if conn == nil || t.dropping {
		t.mu.Unlock()
		return false
	}
	t.dropping = true
	t.mu.Unlock()
	conn.CloseNow()
	return true
}

// detach is called once the connection has failed: whether a round closed it.
func (t *tracker) detach() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	dropped := t.dropping
	t.conn, t.dropping = nil, false
	return dropped
}

// note moves the position past an alert that came live (seq: Percolert's; offset:
// Centrifugo's) and returns its tag.
func (t *tracker) note(seq int64, offset uint64) string {
	replayed := t.connection > 0 && seq != 0 && seq <= t.replayUpTo
	t.pos.seq = max(t.pos.seq, seq)
	t.pos.offset = max(t.pos.offset, offset)
	return connectionTag(replayed, t.connection)
}

// marker is the position a record line states: the seq to resume after, or the offset.
func (t *tracker) marker() int64 {
	if t.pos.channel != "" {
		return int64(t.pos.offset)
	}
	return t.pos.seq
}

// dropRounds runs a round per signal: the trackers dropped one after another over the
// spread, from the delay on, then a `!round` line with how many were dropped.
func dropRounds(ctx context.Context, signals <-chan os.Signal, spec reconnectSpec, trackers []*tracker, arrivals chan<- arrival) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-signals:
		}
		start := time.Now().Add(seconds(spec.DelayS))
		dropped := 0
		for k, t := range trackers {
			at := start.Add(time.Duration(float64(seconds(spec.SpreadS)) * float64(k) / float64(len(trackers))))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(at)):
			}
			if t.drop() {
				dropped++
			}
		}
		arrivals <- arrival{rid: roundMark, at: time.Now(), seq: int64(dropped), socket: -1, tag: "-"}
	}
}

func seconds(value float64) time.Duration {
	return time.Duration(value * float64(time.Second))
}
