package main

import (
	"context"
	"encoding/json"
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
	conn, _, err := connect(context.Background(), spec, socket, 5*time.Second)
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
