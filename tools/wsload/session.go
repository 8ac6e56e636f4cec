package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// session is one subscriber socket from its first greeting on: every alert it reads goes to
// the record, and a tracked one is dropped and resumed by reconnect rounds.
type session struct {
	ctx          context.Context
	spec         subscribeSpec
	socket       socketPlan
	tracker      *tracker // nil unless rounds may drop it
	arrivals     chan<- arrival
	greetTimeout time.Duration
	closed       *atomic.Int64 // sockets the server closed while measuring
}

// serve reads the socket until the run ends, the server closes it, or a resume fails.
func (s *session) serve(conn *websocket.Conn, greet greeting) {
	for {
		if s.tracker != nil {
			s.tracker.attach(conn)
		}
		s.greeted(conn, greet)
		s.read(conn)
		conn.CloseNow()
		if s.ctx.Err() != nil {
			return
		}
		if s.tracker == nil || !s.tracker.detach() {
			s.closed.Add(1)
			s.arrivals <- arrival{rid: closedMark, at: time.Now(), socket: -1}
			return
		}
		// A round closed it: back after a while, where its stream stood.
		var resumed bool
		if conn, greet, resumed = s.resume(); !resumed {
			return
		}
	}
}

// greeted records what the greeting carried: the publications a Centrifugo recovery
// replayed, and whatever followed its reply in the same frame.
func (s *session) greeted(conn *websocket.Conn, greet greeting) {
	now := time.Now()
	for _, data := range greet.replayed { // a tracked socket's resume only
		if rid, seq, ok := decoded(data); ok {
			s.arrivals <- arrival{rid, now, seq, s.socket.index, connectionTag(true, s.tracker.connection)}
		}
	}
	if len(greet.rest) > 0 {
		s.frame(conn, greet.rest, now)
	}
}

// read records what arrives until the connection fails.
func (s *session) read(conn *websocket.Conn) {
	var data bytes.Buffer // reused: one message at a time
	for {
		_, reader, err := conn.Reader(s.ctx)
		if err == nil {
			data.Reset()
			_, err = data.ReadFrom(reader)
		}
		if err != nil {
			return
		}
		now := time.Now()
		if s.spec.Protocol == protocolCentrifugo {
			s.frame(conn, data.Bytes(), now)
		} else if rid, seq, ok := searchID(data.Bytes()); ok {
			s.record(rid, seq, 0, now)
		}
	}
}

// frame records the publications of a Centrifugo frame and answers its pings.
func (s *session) frame(conn *websocket.Conn, frame []byte, now time.Time) {
	pings := centrifugoFrame(frame, func(rid string, seq int64, line []byte) {
		var offset uint64
		if s.tracker != nil {
			offset = pubOffset(line)
		}
		s.record(rid, seq, offset, now)
	})
	for ; pings > 0; pings-- {
		// A failed pong shows as the next read's error.
		_ = conn.Write(s.ctx, websocket.MessageText, centrifugoPing)
	}
}

func (s *session) record(rid string, seq int64, offset uint64, at time.Time) {
	if s.tracker == nil {
		s.arrivals <- arrival{rid: rid, at: at, seq: seq, socket: -1}
		return
	}
	s.arrivals <- arrival{rid, at, seq, s.socket.index, s.tracker.note(seq, offset)}
}

// resume is a dropped socket's way back: away for the round's while, then the greeting
// that resumes its stream (retried as a first connection is).
func (s *session) resume() (*websocket.Conn, greeting, bool) {
	t := s.tracker
	s.arrivals <- arrival{droppedMark, time.Now(), t.marker(), t.index, connectionTag(false, t.connection)}
	select {
	case <-time.After(seconds(s.spec.Reconnect.AwayS)):
	case <-s.ctx.Done():
		return nil, greeting{}, false
	}
	t.connection++
	from := t.pos
	var conn *websocket.Conn
	var greet greeting
	var err error
	for attempt := 0; ; attempt++ {
		conn, _, greet, err = connect(s.ctx, s.spec, s.socket, s.greetTimeout, &from)
		if err == nil || attempt >= s.spec.DialRetries || s.ctx.Err() != nil {
			break
		}
		time.Sleep(time.Duration(100*(attempt+1)) * time.Millisecond)
	}
	tag := connectionTag(false, t.connection)
	if err != nil {
		if s.ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "wsload: socket %d did not resume: %v\n", t.index, err)
			s.arrivals <- arrival{unresumedMark, time.Now(), 0, t.index, tag}
		}
		return nil, greeting{}, false
	}
	if greet.recovered != nil {
		tag += map[bool]string{true: "+recovered", false: "+unrecovered"}[*greet.recovered]
	}
	// Percolert replays what was missed after the hello: up to its last_seq.
	t.replayUpTo = greet.pos.seq
	t.pos = position{
		seq:     max(from.seq, greet.pos.seq),
		channel: greet.pos.channel,
		epoch:   greet.pos.epoch,
		offset:  greet.pos.offset,
	}
	s.arrivals <- arrival{resumedMark, time.Now(), t.marker(), t.index, tag}
	return conn, greet, true
}
