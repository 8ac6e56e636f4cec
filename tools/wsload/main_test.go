package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// quickAlert must agree with a full JSON decode on every alert it accepts, and leave to
// the decode what it cannot read plainly.
func TestQuickAlertAgreesWithTheDecoder(t *testing.T) {
	cases := []struct {
		raw   string
		quick bool
	}{
		{`{"type":"alert","id":"17-w-1","seq":1795522094274001,"watch":{"id":"w-1","terms":"sony"},"count":1,"at":"2026-11-24T12:00:00.123456+00:00","found":[]}`, true},
		{`{"type":"alert","id":"1-w","seq":5,"watch":{"id":"w","terms":"say \"at\":\"x y\""},"count":1,"at":"2026-11-24T12:00:00.000001+00:00","found":[{"sku":"A","product_name":"\"at\":\"no\"","price":1.0,"previous_price":null,"category":"c","brand":"b"}]}`, true},
		{`{"type":"alert","id":"1-w","seq":5,"watch":{"id":"w","terms":"t"},"count":1,"at":"\u0032026","found":[]}`, false},
		{`{"type": "notification", "rid": "bb0-4"}`, false},
	}
	for _, c := range cases {
		rid, seq, ok := quickAlert([]byte(c.raw))
		if ok != c.quick {
			t.Fatalf("quickAlert(%s) ok = %v", c.raw, ok)
		}
		fullRid, fullSeq, fullOk := decoded([]byte(c.raw))
		if !fullOk {
			t.Fatalf("decoded(%s) failed", c.raw)
		}
		if ok && (rid != fullRid || seq != fullSeq) {
			t.Fatalf("quickAlert(%s) = %q %d, decoder %q %d", c.raw, rid, seq, fullRid, fullSeq)
		}
	}
}

// percentiles picks the same ranks as the harness's own (bench/harness.py percentiles).
func TestPercentilesPickTheHarnessRanks(t *testing.T) {
	values := make([]float64, 0, 101)
	for i := 100; i >= 0; i-- {
		values = append(values, float64(i))
	}
	got := percentiles(values)
	want := map[string]float64{"p50": 50, "p90": 90, "p99": 99, "max": 100}
	for key, value := range want {
		if got[key] != value {
			t.Fatalf("percentiles: %s = %v, want %v (all: %v)", key, got[key], value, got)
		}
	}
	if len(percentiles(nil)) != 0 {
		t.Fatal("percentiles of nothing must be empty")
	}
}

// plans opens `/ws?auth=token` for each line of the tokens file, without a cookie unless
// the spec gives one, and refuses a file that does not match the sockets.
func TestPlansGiveEachSocketItsToken(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.txt")
	if err := os.WriteFile(tokens, []byte("a.b.c\nd.e.f\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := subscribeSpec{URL: "ws://127.0.0.1:1/ws", Origin: "http://127.0.0.1:1", AuthTokens: tokens}
	sockets, err := plans(spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(sockets) != 2 || sockets[1].token != "d.e.f" || sockets[0].url != "ws://127.0.0.1:1/ws?auth=token" {
		t.Fatalf("plans: %+v", sockets)
	}
	if sockets[0].header.Get("Cookie") != "" || sockets[0].header.Get("Origin") != spec.Origin {
		t.Fatalf("headers: %v", sockets[0].header)
	}
	spec.URL += "?after=5"
	if sockets, _ := plans(spec); sockets[0].url != "ws://127.0.0.1:1/ws?after=5&auth=token" {
		t.Fatalf("with a query: %s", sockets[0].url)
	}
	cookie := "c"
	spec.Cookies = []*string{&cookie}
	if _, err := plans(spec); err == nil {
		t.Fatal("one cookie for two tokens must be refused")
	}
	// Without tokens: one socket per cookie, as before.
	spec.AuthTokens = ""
	sockets, err = plans(spec)
	if err != nil || len(sockets) != 1 || sockets[0].token != "" || sockets[0].url != spec.URL ||
		sockets[0].header.Get("Cookie") != "percolert_session=c" {
		t.Fatalf("cookie plans: %+v %v", sockets, err)
	}
}

// A token socket's first message is its auth message, and its greeting time runs to the
// hello that answers it: the server's time checking the token is in it.
func TestATokenSocketAuthenticatesBeforeItsHello(t *testing.T) {
	const checking = 80 * time.Millisecond
	firsts := make(chan string, 1)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("auth") != "token" {
			http.Error(w, "no auth=token", http.StatusForbidden)
			return
		}
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		_, first, err := conn.Read(r.Context())
		if err != nil {
			return
		}
		firsts <- string(first)
		time.Sleep(checking)
		conn.Write(r.Context(), websocket.MessageText, []byte(`{"type":"hello"}`))
		conn.Read(r.Context()) // until the client goes
	}))
	defer server.Close()
	spec := subscribeSpec{URL: "ws" + strings.TrimPrefix(server.URL, "http") + "/ws", Hello: true}
	socket := socketPlan{url: spec.URL + "?auth=token", header: http.Header{}, token: "x.y.z"}
	started := time.Now()
	conn, _, _, err := connect(context.Background(), spec, socket, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	greeted := time.Since(started)
	conn.CloseNow()
	var auth map[string]string
	if err := json.Unmarshal([]byte(<-firsts), &auth); err != nil || auth["type"] != "auth" || auth["token"] != "x.y.z" {
		t.Fatalf("first message: %v (%v)", auth, err)
	}
	if greeted < checking {
		t.Fatalf("greeted after %v: the auth round (%v) is not in it", greeted, checking)
	}
}

// A Centrifugo frame holds replies one a line: its pings are counted (each owed a pong) and
// its publications read as alerts, without a decode where the data is encoded as Percolert
// encodes alerts, and agreeing with the full decode wherever the quick path answers.
func TestCentrifugoFramesGiveAlertsAndPings(t *testing.T) {
	lines := []string{
		`{}`,
		`{"push":{"channel":"personal:#u1","pub":{"data":{"type":"alert","seq":1795522094274001,"at":"e-1"},"offset":3}}}`,
		`{"push":{"channel":"personal:#\"pub\":{\"data\":u2","pub":{"data":{"type":"alert","seq":5,"at":"e-2"}}}}`,
		`{"push":{"channel":"personal:#u3","pub":{"data":{"type": "alert", "seq": 7, "at": "e-3"},"offset":1}}}`,
		`{"id":1,"connect":{"client":"c","subs":{"personal:#u1":{}}}}`,
		`{"push":{"channel":"personal:#u1","join":{"info":{"user":"u1","client":"c"}}}}`,
		`{"push":{"channel":"personal:#u1","pub":{"data":{"type":"other","at":"x"}}}}`,
		`{}`,
	}
	var rids []string
	var seqs []int64
	pings := centrifugoFrame([]byte(strings.Join(lines, "\n")+"\n"), func(rid string, seq int64, _ []byte) {
		rids = append(rids, rid)
		seqs = append(seqs, seq)
	})
	if pings != 2 {
		t.Fatalf("pings = %d, want 2", pings)
	}
	if strings.Join(rids, ",") != "e-1,e-2,e-3" || seqs[0] != 1795522094274001 || seqs[1] != 5 || seqs[2] != 7 {
		t.Fatalf("alerts: %v %v", rids, seqs)
	}
	for _, line := range lines {
		rid, seq, ok := centrifugoAlert([]byte(line))
		fullRid, fullSeq, fullOk := decodedPush([]byte(line))
		if ok != fullOk || rid != fullRid || seq != fullSeq {
			t.Fatalf("%s: quick %q %d %v, decoder %q %d %v", line, rid, seq, ok, fullRid, fullSeq, fullOk)
		}
	}
	if centrifugoFrame([]byte(`{"type":"alert","seq":1,"at":"x"}`), func(string, int64, []byte) {
		t.Fatal("a Percolert alert outside a push is not a Centrifugo publication")
	}) != 0 {
		t.Fatal("no pings in it")
	}
}

// fakeCentrifugo answers a connect command (after a ping the client must answer) with
// `connectReply`, and a subscribe command with a subscribe reply; what the client sent
// comes back on `commands`.
func fakeCentrifugo(t *testing.T, connectReply string) (*httptest.Server, chan string) {
	commands := make(chan string, 8)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		ctx := r.Context()
		_, connect, err := conn.Read(ctx)
		if err != nil {
			return
		}
		commands <- string(connect)
		conn.Write(ctx, websocket.MessageText, []byte(`{}`))
		if _, pong, err := conn.Read(ctx); err != nil || string(pong) != `{}` {
			t.Errorf("pong: %q %v", pong, err)
			return
		}
		conn.Write(ctx, websocket.MessageText, []byte(connectReply))
		for {
			_, command, err := conn.Read(ctx)
			if err != nil {
				return
			}
			commands <- string(command)
			conn.Write(ctx, websocket.MessageText, []byte(`{"id":2,"subscribe":{}}`))
		}
	}))
	return server, commands
}

// A Centrifugo socket's greeting is its connect command's reply (its pings answered on the
// way), plus a subscribe round with a channel; an error reply or no subscription fails it.
func TestACentrifugoSocketConnects(t *testing.T) {
	spec := subscribeSpec{Protocol: protocolCentrifugo}
	serverSide := `{"id":1,"connect":{"client":"c","subs":{"personal:#u1":{}},"ping":25,"pong":true}}`
	server, commands := fakeCentrifugo(t, serverSide)
	defer server.Close()
	url := "ws" + strings.TrimPrefix(server.URL, "http") + "/connection/websocket"
	conn, _, _, err := connect(context.Background(), spec, socketPlan{url: url, token: "x.y.z"}, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.CloseNow()
	if got := <-commands; got != `{"connect":{"token":"x.y.z"},"id":1}` {
		t.Fatalf("connect command: %s", got)
	}

	clientSide, commands := fakeCentrifugo(t, `{"id":1,"connect":{"client":"c"}}`)
	defer clientSide.Close()
	url = "ws" + strings.TrimPrefix(clientSide.URL, "http")
	if _, _, _, err := connect(context.Background(), spec, socketPlan{url: url, token: "t"}, 5*time.Second, nil); err == nil ||
		!strings.Contains(err.Error(), "no server-side subscription") {
		t.Fatalf("without a channel or a server-side subscription: %v", err)
	}
	<-commands
	conn, _, _, err = connect(context.Background(), spec, socketPlan{url: url, token: "t", channel: "personal:#u1"}, 5*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.CloseNow()
	<-commands
	if got := <-commands; got != `{"id":2,"subscribe":{"channel":"personal:#u1"}}` {
		t.Fatalf("subscribe command: %s", got)
	}

	refused, _ := fakeCentrifugo(t, `{"id":1,"error":{"code":109,"message":"token expired"}}`)
	defer refused.Close()
	url = "ws" + strings.TrimPrefix(refused.URL, "http")
	if _, _, _, err := connect(context.Background(), spec, socketPlan{url: url, token: "t"}, 5*time.Second, nil); err == nil ||
		!strings.Contains(err.Error(), "109") {
		t.Fatalf("an error reply must fail the greeting: %v", err)
	}
}

// A Centrifugo spec opens its URL as it is, a socket per token, with the channels file's
// lines; a mismatched file or an unknown protocol is refused.
func TestCentrifugoPlans(t *testing.T) {
	dir := t.TempDir()
	tokens, channels := filepath.Join(dir, "tokens.txt"), filepath.Join(dir, "channels.txt")
	os.WriteFile(tokens, []byte("a\nb\n"), 0o644)
	os.WriteFile(channels, []byte("personal:#u1\npersonal:#u2\n"), 0o644)
	spec := subscribeSpec{URL: "ws://127.0.0.1:1/connection/websocket", Protocol: protocolCentrifugo, AuthTokens: tokens}
	sockets, err := plans(spec)
	if err != nil || len(sockets) != 2 || sockets[1].url != spec.URL || sockets[1].token != "b" || sockets[1].channel != "" {
		t.Fatalf("server-side plans: %+v %v", sockets, err)
	}
	spec.Channels = channels
	if sockets, err = plans(spec); err != nil || sockets[1].channel != "personal:#u2" {
		t.Fatalf("client-side plans: %+v %v", sockets, err)
	}
	os.WriteFile(channels, []byte("personal:#u1\n"), 0o644)
	if _, err := plans(spec); err == nil {
		t.Fatal("one channel for two sockets must be refused")
	}
	if _, err := plans(subscribeSpec{Protocol: "other"}); err == nil {
		t.Fatal("an unknown protocol must be refused")
	}
	if _, err := plans(subscribeSpec{Protocol: protocolCentrifugo}); err == nil {
		t.Fatal("Centrifugo sockets need tokens")
	}
}

// Reconnect rounds drop the same evenly spread sockets every time, which the plans mark;
// Percolert's sockets need their hello for it (its last_seq tells the replay from the rest).
func TestPlansMarkTheSocketsRoundsDrop(t *testing.T) {
	cookies := make([]*string, 20)
	spec := subscribeSpec{URL: "ws://127.0.0.1:1/ws", Cookies: cookies, Hello: true, Reconnect: &reconnectSpec{Share: 0.1}}
	sockets, err := plans(spec)
	if err != nil {
		t.Fatal(err)
	}
	var tracked []int
	for i, socket := range sockets {
		if socket.index != i {
			t.Fatalf("socket %d has index %d", i, socket.index)
		}
		if socket.tracked {
			tracked = append(tracked, i)
		}
	}
	if len(tracked) != 2 || tracked[0] != 9 || tracked[1] != 19 {
		t.Fatalf("tracked: %v", tracked)
	}
	spec.Hello = false
	if _, err := plans(spec); err == nil {
		t.Fatal("a Percolert reconnect without the hello must be refused")
	}
	spec.Reconnect = nil
	if sockets, _ := plans(spec); sockets[9].tracked {
		t.Fatal("no rounds, nothing tracked")
	}
}

// A run split over two load clients (socket k on client k mod 2) numbers each client's
// sockets as the run does, and its rounds drop the same sockets as one client's would: at
// 0.1, the run's sockets 9, 19, 29, ... all of them the second client's.
func TestASplitRunNumbersAndDropsItsSocketsAsTheWholeRun(t *testing.T) {
	var whole []int
	for part := 0; part < 2; part++ {
		spec := subscribeSpec{
			URL: "ws://127.0.0.1:1/ws", Cookies: make([]*string, 20), Hello: true,
			Reconnect: &reconnectSpec{Share: 0.1}, FirstSocket: part, SocketStep: 2,
		}
		sockets, err := plans(spec)
		if err != nil {
			t.Fatal(err)
		}
		for i, socket := range sockets {
			if socket.index != part+2*i {
				t.Fatalf("client %d socket %d has index %d", part, i, socket.index)
			}
			if socket.tracked {
				whole = append(whole, socket.index)
			}
		}
	}
	if fmt.Sprint(whole) != fmt.Sprint(droppedSockets(40, 0.1)) {
		t.Fatalf("dropped %v, the whole run drops %v", whole, droppedSockets(40, 0.1))
	}
	if _, err := plans(subscribeSpec{URL: "ws://h/ws", Cookies: make([]*string, 2), FirstSocket: -1}); err == nil {
		t.Fatal("a negative first socket must be refused")
	}
}

// The hello's last_seq is where a socket's stream stands, and `recovered` (on a resume)
// whether all that was missed follows; anything else is no hello.
func TestHelloLastSeq(t *testing.T) {
	seq, recovered, err := helloLastSeq([]byte(`{"type":"hello","protocol":2,"coalesce_seconds":0,"watches":[],"recent":[],"last_seq":1795522094274001,"away":null,"recovered":null}`))
	if err != nil || seq != 1795522094274001 || recovered != nil {
		t.Fatalf("%d %v %v", seq, recovered, err)
	}
	_, recovered, err = helloLastSeq([]byte(`{"type":"hello","last_seq":7,"recovered":false}`))
	if err != nil || recovered == nil || *recovered {
		t.Fatalf("a resume that lost alerts: %v %v", recovered, err)
	}
	if _, _, err := helloLastSeq([]byte(`{"type":"alert","seq":5}`)); err == nil {
		t.Fatal("an alert is not a hello")
	}
}

// A client-side subscription resumes with recover, epoch and offset in its subscribe
// command; a reply without `recovered` is a stream the server did not recover.
func TestAClientSideSubscriptionAsksToRecover(t *testing.T) {
	server, commands := fakeCentrifugo(t, `{"id":1,"connect":{"client":"c"}}`)
	defer server.Close()
	url := "ws" + strings.TrimPrefix(server.URL, "http")
	spec := subscribeSpec{Protocol: protocolCentrifugo}
	from := position{channel: "personal:#u1", epoch: "ep", offset: 7}
	conn, _, greet, err := connect(context.Background(), spec, socketPlan{url: url, token: "t", channel: "personal:#u1"}, 5*time.Second, &from)
	if err != nil {
		t.Fatal(err)
	}
	conn.CloseNow()
	if got := <-commands; got != `{"connect":{"token":"t"},"id":1}` {
		t.Fatalf("a client-side subscription's connect asks nothing: %s", got)
	}
	if got := <-commands; got != `{"id":2,"subscribe":{"channel":"personal:#u1","epoch":"ep","offset":7,"recover":true}}` {
		t.Fatalf("subscribe command: %s", got)
	}
	if greet.recovered == nil || *greet.recovered || greet.pos.channel != "personal:#u1" {
		t.Fatalf("greeting: %+v", greet)
	}
}
