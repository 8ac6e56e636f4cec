package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// A round drops an even spread of the sockets: every tenth at 0.1, none at 0, all at 1.
func TestDroppedSocketsAreEvenlySpread(t *testing.T) {
	if got := fmt.Sprint(droppedSockets(30, 0.1)); got != "[9 19 29]" {
		t.Fatalf("0.1 of 30: %s", got)
	}
	if got := droppedSockets(30, 0); len(got) != 0 {
		t.Fatalf("none: %v", got)
	}
	if got := droppedSockets(4, 1); fmt.Sprint(got) != "[0 1 2 3]" {
		t.Fatalf("all: %v", got)
	}
	if got := len(droppedSockets(1000, 0.1)); got != 100 {
		t.Fatalf("0.1 of 1000: %d", got)
	}
}

// A Percolert socket resumes after a seq, whatever query its URL has already.
func TestResumeURL(t *testing.T) {
	if got := resumeURL("ws://h/ws", 17); got != "ws://h/ws?after=17" {
		t.Fatal(got)
	}
	if got := resumeURL("ws://h/ws?auth=token", 0); got != "ws://h/ws?auth=token&after=0" {
		t.Fatal(got)
	}
}

// A publication's offset follows its data: a product named like the key does not fool it.
func TestPubOffsetIsThePublications(t *testing.T) {
	cases := map[string]uint64{
		`{"push":{"channel":"personal:#u1","pub":{"data":{"type":"alert","seq":5,"at":"x"},"offset":42}}}`:                                   42,
		`{"push":{"channel":"personal:#u1","pub":{"data":{"type":"alert","found":[{"product_name":"\"offset\":7"}]},"offset":8,"tags":{}}}}`: 8,
		`{"push":{"channel":"personal:#u1","pub":{"data":{"type":"alert","seq":5,"at":"x"}}}}`:                                               0,
	}
	for line, want := range cases {
		if got := pubOffset([]byte(line)); got != want {
			t.Fatalf("%s: %d, want %d", line, got, want)
		}
	}
}

// On a resumed connection an alert up to the hello's last_seq is the replay's, later ones
// live; the position follows the newest seen either way.
func TestTheTrackerTagsReplayedAlertsAndFollowsThePosition(t *testing.T) {
	tr := &tracker{pos: position{seq: 3}}
	if tag := tr.note(5, 0); tag != "c0" || tr.pos.seq != 5 {
		t.Fatalf("first connection: %s %d", tag, tr.pos.seq)
	}
	tr.connection, tr.replayUpTo = 1, 8
	for seq, want := range map[int64]string{6: "r1", 8: "r1", 9: "c1"} {
		if tag := tr.note(seq, 0); tag != want {
			t.Fatalf("seq %d: %s, want %s", seq, tag, want)
		}
	}
	if tr.pos.seq != 9 || tr.marker() != 9 {
		t.Fatalf("position %d", tr.pos.seq)
	}
	tr = &tracker{pos: position{channel: "personal:#u1", offset: 4}}
	tr.note(5, 6)
	if tr.marker() != 6 {
		t.Fatalf("a Centrifugo socket's marker is its offset: %d", tr.marker())
	}
}

// nextLine is the next record line from `arrivals` (as the writer formats it, the time left
// out), waited for up to a few seconds.
func nextLine(t *testing.T, arrivals <-chan arrival) string {
	t.Helper()
	select {
	case a := <-arrivals:
		return fmt.Sprintf("%s %d %d %s", a.rid, a.seq, a.socket, a.tag)
	case <-time.After(5 * time.Second):
		t.Fatal("no record line")
		return ""
	}
}

// expectLines reads `want` record lines from `arrivals`, in order.
func expectLines(t *testing.T, arrivals <-chan arrival, want ...string) {
	t.Helper()
	for _, line := range want {
		if got := nextLine(t, arrivals); got != line {
			t.Fatalf("record: %q, want %q", got, line)
		}
	}
}

func percolertAlert(seq int64, at string) string {
	return fmt.Sprintf(`{"type":"alert","id":"%d-w","seq":%d,"watch":{"id":"w","terms":"t"},"count":1,"at":"%s","found":[]}`, seq, seq, at)
}

// A dropped Percolert socket comes back with `after=` the newest seq it saw; what its
// greeting replays (up to the hello's last_seq) is tagged so, the live ones after it are
// not, and an alert sent twice is recorded twice.
func TestAPercolertSocketResumesAfterTheNewestSeqItSaw(t *testing.T) {
	resumes := make(chan string, 2)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		after := r.URL.Query().Get("after")
		send := func(frame string) { conn.Write(ctx, websocket.MessageText, []byte(frame)) }
		if after == "" {
			send(`{"type":"hello","protocol":2,"watches":[],"recent":[],"last_seq":2,"away":null}`)
			send(percolertAlert(3, "s-3"))
			send(percolertAlert(4, "s-4"))
		} else {
			resumes <- after
			send(`{"type":"hello","protocol":2,"watches":[],"recent":[],"last_seq":6,"away":null}`)
			send(percolertAlert(5, "s-5"))
			send(percolertAlert(6, "s-6"))
			send(percolertAlert(6, "s-6")) // twice: recorded twice
			send(percolertAlert(7, "s-7"))
		}
		conn.Read(ctx) // until the client goes
	}))
	defer server.Close()
	spec := subscribeSpec{
		URL: "ws" + strings.TrimPrefix(server.URL, "http") + "/ws", Hello: true,
		Reconnect: &reconnectSpec{Share: 1, AwayS: 0.05},
	}
	sockets, err := plans(subscribeSpec{URL: spec.URL, Hello: true, Cookies: []*string{nil}, Reconnect: spec.Reconnect})
	if err != nil || len(sockets) != 1 || !sockets[0].tracked {
		t.Fatalf("plans: %+v %v", sockets, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, _, greet, err := connect(ctx, spec, sockets[0], 5*time.Second, nil)
	if err != nil || greet.pos.seq != 2 {
		t.Fatalf("connect: %v, last_seq %d", err, greet.pos.seq)
	}
	arrivals := make(chan arrival, 64)
	tr := &tracker{index: 0, pos: greet.pos}
	var closed atomic.Int64
	run := session{ctx: ctx, spec: spec, socket: sockets[0], tracker: tr, arrivals: arrivals, greetTimeout: 5 * time.Second, closed: &closed}
	go run.serve(conn, greet)
	expectLines(t, arrivals, "s-3 3 0 c0", "s-4 4 0 c0")

	rounds := make(chan os.Signal, 1)
	go dropRounds(ctx, rounds, *spec.Reconnect, []*tracker{tr}, arrivals)
	rounds <- syscall.SIGUSR1
	// The round's line and the socket's own come from two goroutines: in either order.
	lines := []string{nextLine(t, arrivals), nextLine(t, arrivals)}
	sort.Strings(lines)
	if strings.Join(lines, ",") != "!dropped 4 0 c0,!round 1 -1 -" {
		t.Fatalf("the drop: %v", lines)
	}
	expectLines(t, arrivals, "!resumed 6 0 c1")
	if after := <-resumes; after != "4" {
		t.Fatalf("resumed after %s, want 4", after)
	}
	expectLines(t, arrivals, "s-5 5 0 r1", "s-6 6 0 r1", "s-6 6 0 r1", "s-7 7 0 c1")
	if closed.Load() != 0 {
		t.Fatal("a round's drop is not the server's close")
	}
}

// A dropped Centrifugo socket connects again asking its server-side subscription to
// recover from the last offset and epoch it saw; the server's word on it, the publications
// it replayed and what followed the reply in the same frame are all recorded.
func TestACentrifugoSocketRecoversItsSubscription(t *testing.T) {
	const channel = "personal:#u1"
	resumes := make(chan string, 2)
	pub := func(offset int, at string) string {
		return fmt.Sprintf(`{"push":{"channel":"%s","pub":{"data":{"type":"alert","seq":%d,"at":"%s"},"offset":%d}}}`, channel, offset, at, offset)
	}
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		_, command, err := conn.Read(ctx)
		if err != nil {
			return
		}
		send := func(frame string) { conn.Write(ctx, websocket.MessageText, []byte(frame)) }
		if !strings.Contains(string(command), `"subs"`) {
			send(`{"id":1,"connect":{"client":"c","subs":{"` + channel + `":{"recoverable":true,"epoch":"ep","offset":5,"positioned":true}}}}`)
			send(pub(6, "s-6") + "\n" + pub(7, "s-7"))
		} else {
			resumes <- string(command)
			// The reply, then in the same frame a ping and a live publication.
			send(`{"id":1,"connect":{"client":"c","subs":{"` + channel + `":{"recoverable":true,"epoch":"ep","publications":[{"data":{"type":"alert","seq":8,"at":"s-8"},"offset":8},{"data":{"type":"alert","seq":9,"at":"s-9"},"offset":9}],"recovered":true,"offset":9,"positioned":true}}}}` +
				"\n{}\n" + pub(10, "s-10"))
			if _, pong, err := conn.Read(ctx); err != nil || string(pong) != `{}` {
				t.Errorf("pong: %q %v", pong, err)
			}
		}
		conn.Read(ctx)
	}))
	defer server.Close()
	spec := subscribeSpec{
		URL: "ws" + strings.TrimPrefix(server.URL, "http"), Protocol: protocolCentrifugo,
		Reconnect: &reconnectSpec{Share: 1, AwayS: 0.05},
	}
	socket := socketPlan{index: 3, url: spec.URL, token: "x.y.z", tracked: true}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, _, greet, err := connect(ctx, spec, socket, 5*time.Second, nil)
	if err != nil || greet.pos != (position{channel: channel, epoch: "ep", offset: 5}) || greet.recovered != nil {
		t.Fatalf("connect: %v %+v", err, greet)
	}
	arrivals := make(chan arrival, 64)
	tr := &tracker{index: 3, pos: greet.pos}
	var closed atomic.Int64
	run := session{ctx: ctx, spec: spec, socket: socket, tracker: tr, arrivals: arrivals, greetTimeout: 5 * time.Second, closed: &closed}
	go run.serve(conn, greet)
	expectLines(t, arrivals, "s-6 6 3 c0", "s-7 7 3 c0")
	if !tr.drop() {
		t.Fatal("a connected socket drops")
	}
	expectLines(t, arrivals, "!dropped 7 3 c0", "!resumed 9 3 c1+recovered")
	want := `{"connect":{"subs":{"personal:#u1":{"epoch":"ep","offset":7,"recover":true}},"token":"x.y.z"},"id":1}`
	if got := <-resumes; got != want {
		t.Fatalf("resume command: %s, want %s", got, want)
	}
	expectLines(t, arrivals, "s-8 8 3 r1", "s-9 9 3 r1", "s-10 10 3 c1")
	if tr.pos.offset != 10 {
		t.Fatalf("offset %d", tr.pos.offset)
	}
}
