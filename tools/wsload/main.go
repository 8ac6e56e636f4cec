// wsload is the benchmark's load client (bench/harness.py runs it): subscriber sockets that
// time every alert, and an open-loop search driver. It is written in Go so that the client
// side costs little CPU on the shared 2-core machine and the server's own limit is what the
// benchmark sees; the Python load generator it replaced was the ceiling.
//
//	wsload subscribe SPEC.json RECORD.txt   # sockets; "<search> <epoch s> <seq>" per alert, as they come
//	wsload search PLAN.json RESULT.txt      # "<rid> <sent epoch s> <ms> <status> <at>" per search
//
// A subscriber socket is a session's (its cookie) or, with the spec's `auth_tokens` file, a
// shop account's: it opens `/ws?auth=token` and sends `{"type":"auth","token":...}` first
// (bench/auth_storm.py).
//
// With the spec's `"protocol": "centrifugo"` a socket speaks Centrifugo's JSON client protocol
// instead (bench/centrifugo.py): its first message is a connect command carrying its line of
// `auth_tokens` (a connection JWT), the connect reply is its greeting, and a publication whose
// data is an alert as Percolert encodes it is recorded as Percolert's alert would be. The
// server subscribes each user to its personal channel itself, or, with a `channels` file,
// socket i subscribes to line i. Centrifugo's pings (`{}`) are answered (`{}`).
//
// With the spec's `reconnect`, each SIGUSR1 drops a share of the sockets and resumes them
// (reconnect.go, which describes the record lines of those sockets).
//
// An alert names its search by when the search was made (`at`, to the microsecond: Percolert's
// alerts carry no search text), which the search's answer gives too: the harness joins the two
// files on it. The baseline's notification echoes the search's `rid` instead.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

type subscribeSpec struct {
	URL     string    `json:"url"`
	Origin  string    `json:"origin"`
	Cookies []*string `json:"cookies"`
	Hello   bool      `json:"hello"`
	// Connect storm pacing: handshakes in flight at once (default 64) and new sockets a
	// second (0: no pacing), so that thousands of sockets measure the service rather than
	// the accept queue; a greeting slower than GreetTimeout fails the run.
	Concurrency  int     `json:"concurrency"`
	ConnectRate  float64 `json:"connect_rate"`
	GreetTimeout float64 `json:"greet_timeout_s"`
	// Dials refused or reset during the storm are retried this many times (backoff).
	DialRetries int `json:"dial_retries"`
	// A file of shop tokens (JWTs), one a line: socket i authenticates with line i (it
	// opens URL?auth=token and its first message is the auth message; its greeting time
	// includes that round). Without cookies, one socket per token; with them, as many.
	AuthTokens string `json:"auth_tokens"`
	// Sockets that fail (after their retries) are counted in the ready file rather than
	// ending the run: a storm's failures are part of what it measures.
	CountFailures bool `json:"count_failures"`
	// Protocol is "" (Percolert's) or "centrifugo": see the package comment. Centrifugo's
	// sockets need AuthTokens and open URL as it is.
	Protocol string `json:"protocol"`
	// Centrifugo only: a file of channels, one a line, socket i subscribing to line i
	// (client-side subscriptions). Without it the connect reply must list a server-side one.
	Channels string `json:"channels"`
	// Reconnect rounds, one per SIGUSR1 (reconnect.go); none without it.
	Reconnect *reconnectSpec `json:"reconnect"`
	// A run's sockets split over several load clients (one per server node, each holding
	// every SocketStep-th socket): this client's socket i is the run's socket
	// FirstSocket + i·SocketStep (step default 1). Rounds choose sockets, and the record
	// names them, by that number, so that a share drops the same sockets however the run
	// is split.
	FirstSocket int `json:"first_socket"`
	SocketStep  int `json:"socket_step"`
}

const protocolCentrifugo = "centrifugo"

// socketPlan is one socket to open: its URL, handshake headers, token ("" for none), for
// a client-side Centrifugo subscription its channel, and whether reconnect rounds drop it.
type socketPlan struct {
	index   int
	url     string
	header  http.Header
	token   string
	channel string
	tracked bool
}

// lines are the non-blank lines of a file, trimmed.
func lines(path string) ([]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var kept []string
	for _, line := range strings.Split(string(raw), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			kept = append(kept, line)
		}
	}
	return kept, nil
}

// plans are the sockets `spec` asks for, in order.
func plans(spec subscribeSpec) ([]socketPlan, error) {
	centrifugo := spec.Protocol == protocolCentrifugo
	if spec.Protocol != "" && !centrifugo {
		return nil, fmt.Errorf("unknown protocol %q", spec.Protocol)
	}
	if centrifugo && spec.AuthTokens == "" {
		return nil, fmt.Errorf("the centrifugo protocol needs auth_tokens (connection JWTs)")
	}
	if spec.Channels != "" && !centrifugo {
		return nil, fmt.Errorf("channels is for the centrifugo protocol only")
	}
	if spec.Reconnect != nil && !centrifugo && !spec.Hello {
		// The hello's last_seq tells what the resumed greeting replayed.
		return nil, fmt.Errorf("reconnect needs the hello (Percolert's protocol)")
	}
	var tokens []string
	if spec.AuthTokens != "" {
		var err error
		if tokens, err = lines(spec.AuthTokens); err != nil {
			return nil, err
		}
		if len(spec.Cookies) > 0 && len(tokens) != len(spec.Cookies) {
			return nil, fmt.Errorf("%s: %d tokens for %d sockets", spec.AuthTokens, len(tokens), len(spec.Cookies))
		}
		if len(tokens) == 0 {
			return nil, fmt.Errorf("%s: no tokens", spec.AuthTokens)
		}
	}
	count := len(spec.Cookies)
	if count == 0 {
		count = len(tokens)
	}
	var channels []string
	if spec.Channels != "" {
		var err error
		if channels, err = lines(spec.Channels); err != nil {
			return nil, err
		}
		if len(channels) != count {
			return nil, fmt.Errorf("%s: %d channels for %d sockets", spec.Channels, len(channels), count)
		}
	}
	tokenURL := spec.URL + "?auth=token"
	if strings.Contains(spec.URL, "?") {
		tokenURL = spec.URL + "&auth=token"
	}
	if centrifugo { // Centrifugo reads the token from the connect command only
		tokenURL = spec.URL
	}
	if spec.FirstSocket < 0 || spec.SocketStep < 0 {
		return nil, fmt.Errorf("first_socket and socket_step cannot be negative")
	}
	step := max(spec.SocketStep, 1)
	sockets := make([]socketPlan, count)
	for i := range sockets {
		header := http.Header{"Origin": {spec.Origin}}
		if i < len(spec.Cookies) && spec.Cookies[i] != nil {
			header.Set("Cookie", "percolert_session="+*spec.Cookies[i])
		}
		sockets[i] = socketPlan{index: spec.FirstSocket + step*i, url: spec.URL, header: header}
		if tokens != nil {
			sockets[i].url, sockets[i].token = tokenURL, tokens[i]
		}
		if channels != nil {
			sockets[i].channel = channels[i]
		}
	}
	if spec.Reconnect != nil {
		for i := range sockets {
			sockets[i].tracked = dropsSocket(sockets[i].index, spec.Reconnect.Share)
		}
	}
	return sockets, nil
}

// greeting is what a tracked socket's greeting says of its stream.
type greeting struct {
	pos position // where the stream stands: the hello's last_seq, or the subscription's place
	// On a resume: whether the server said it recovered the stream (Centrifugo's
	// `recovered`, Percolert's hello's), and the
	// data of the publications it replayed.
	recovered *bool
	replayed  [][]byte
	// Centrifugo: the lines that followed the reply in its frame (publications, pings).
	rest []byte
}

// connect dials one socket, sends its auth message (a token socket's) and, with spec.Hello,
// reads its hello: the auth message and the hello within greetTimeout. The handshake's
// duration is returned too. With `resume`, the socket resumes from there.
func connect(ctx context.Context, spec subscribeSpec, socket socketPlan, greetTimeout time.Duration, resume *position) (*websocket.Conn, time.Duration, greeting, error) {
	started := time.Now()
	url := socket.url
	if resume != nil && spec.Protocol != protocolCentrifugo {
		url = resumeURL(url, resume.seq)
	}
	dialCtx, dialCancel := context.WithTimeout(ctx, time.Minute)
	conn, _, err := websocket.Dial(dialCtx, url, &websocket.DialOptions{HTTPHeader: socket.header})
	dialCancel()
	shook := time.Since(started)
	if err != nil {
		return nil, shook, greeting{}, err
	}
	conn.SetReadLimit(1 << 22)
	greetCtx, greetCancel := context.WithTimeout(ctx, greetTimeout)
	defer greetCancel()
	if spec.Protocol == protocolCentrifugo {
		greet, err := centrifugoGreet(greetCtx, conn, socket, resume)
		if err != nil {
			conn.CloseNow()
			return nil, shook, greeting{}, err
		}
		return conn, shook, greet, nil
	}
	if socket.token != "" {
		auth, _ := json.Marshal(map[string]string{"type": "auth", "token": socket.token})
		if err := conn.Write(greetCtx, websocket.MessageText, auth); err != nil {
			conn.CloseNow()
			return nil, shook, greeting{}, fmt.Errorf("auth message: %w", err)
		}
	}
	var greet greeting
	if spec.Hello {
		_, hello, err := conn.Read(greetCtx)
		if err != nil {
			conn.CloseNow()
			return nil, shook, greeting{}, fmt.Errorf("no hello within %v: %w", greetTimeout, err)
		}
		if socket.tracked { // decoded only where a resume needs it: the storm's CPU is measured
			if greet.pos.seq, greet.recovered, err = helloLastSeq(hello); err != nil {
				conn.CloseNow()
				return nil, shook, greeting{}, err
			}
		}
	}
	return conn, shook, greet, nil
}

// helloLastSeq is the `last_seq` of Percolert's hello, where its socket's stream stands,
// and on a resume its `recovered`: whether all that was missed follows (nil before the
// server said so, or without `after`).
func helloLastSeq(raw []byte) (int64, *bool, error) {
	var hello struct {
		Type      string `json:"type"`
		LastSeq   int64  `json:"last_seq"`
		Recovered *bool  `json:"recovered"`
	}
	if err := json.Unmarshal(raw, &hello); err != nil || hello.Type != "hello" {
		return 0, nil, fmt.Errorf("not a hello: %.200s", raw)
	}
	return hello.LastSeq, hello.Recovered, nil
}

// connectStats is the ready file's content: how the connect storm went.
type connectStats struct {
	Sockets        int64              `json:"sockets"`
	ConnectSeconds float64            `json:"connect_seconds"`
	DialRetries    int64              `json:"dial_retries"`
	HandshakeMs    map[string]float64 `json:"handshake_ms"`
	GreetMs        map[string]float64 `json:"greet_ms"`
	GreetsOver1s   int                `json:"greets_over_1s"`
	// With spec.CountFailures: sockets never greeted, and the first few reasons.
	Failed int64    `json:"failed"`
	Errors []string `json:"errors"`
}

// keptErrors bounds the reasons a ready file lists.
const keptErrors = 5

// percentiles of `values` (milliseconds), as the harness reports them.
func percentiles(values []float64) map[string]float64 {
	if len(values) == 0 {
		return map[string]float64{}
	}
	sort.Float64s(values)
	at := func(fraction float64) float64 {
		return math.Round(values[int(math.Round(fraction*float64(len(values)-1)))]*100) / 100
	}
	return map[string]float64{"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1)}
}

// message holds the fields of Percolert's alert and the baseline's notification that name
// the search: Percolert's alert carries when the search was made (`at`), the baseline
// echoes `rid`.
// Percolert's `seq` is the alert's position: microseconds since the epoch when the alert
// was dispatched, which splits the latency into before and after the server's fan-out.
type message struct {
	Type string `json:"type"`
	At   string `json:"at"`
	Rid  string `json:"rid"`
	Seq  int64  `json:"seq"`
}

// closedMark is recorded, in place of a search id, when the server closes a socket.
const closedMark = "!closed"

// arrival is a record line: an alert (or a mark) and, on a socket reconnect rounds drop,
// the socket and its tag (reconnect.go); tag "" for the others.
type arrival struct {
	rid    string
	at     time.Time
	seq    int64
	socket int
	tag    string
}

var (
	alertStart = []byte(`{"type":"alert",`)
	seqKey     = []byte(`"seq":`)
	atKey      = []byte(`"at":"`)
)

// quickAlert reads the search time and seq of an alert as Percolert encodes it (msgspec: no
// spaces, fields in declaration order) without decoding the JSON, which was most of this
// client's CPU per alert; ok is false for anything else (decoded in full by searchID). An
// unescaped `"seq":` or `"at":"` can only be a key: inside a string value its quotes would
// be escaped.
func quickAlert(raw []byte) (string, int64, bool) {
	if !bytes.HasPrefix(raw, alertStart) {
		return "", 0, false
	}
	at := bytes.Index(raw, seqKey)
	if at < 0 {
		return "", 0, false
	}
	var seq int64
	digits := 0
	for i := at + len(seqKey); i < len(raw) && raw[i] >= '0' && raw[i] <= '9'; i++ {
		seq = seq*10 + int64(raw[i]-'0')
		digits++
	}
	at = bytes.Index(raw, atKey)
	if digits == 0 || at < 0 {
		return "", 0, false
	}
	start := at + len(atKey)
	end := start
	for end < len(raw) && raw[end] != '"' {
		if raw[end] == '\\' {
			end++
		}
		end++
	}
	if end >= len(raw) {
		return "", 0, false
	}
	made := raw[start:end]
	if len(made) == 0 || bytes.IndexByte(made, '\\') >= 0 || bytes.IndexByte(made, ' ') >= 0 {
		return "", 0, false
	}
	return string(made), seq, true
}

// searchID names the search an alert answers (when it was made; the baseline: its rid),
// and the alert's seq (0 for the baseline).
func searchID(raw []byte) (string, int64, bool) {
	if rid, seq, ok := quickAlert(raw); ok {
		return rid, seq, true
	}
	return decoded(raw)
}

// decoded is searchID by a full JSON decode.
func decoded(raw []byte) (string, int64, bool) {
	var m message
	if json.Unmarshal(raw, &m) != nil {
		return "", 0, false
	}
	switch m.Type {
	case "alert":
		if m.At == "" || strings.ContainsAny(m.At, " \n") {
			return "", 0, false
		}
		return m.At, m.Seq, true
	case "notification":
		return m.Rid, 0, true
	}
	return "", 0, false
}

// centrifugoSubscription is what the greeting needs of a subscribe result: where the
// stream stands and, on a recovery, what the server said of it and what it replayed.
type centrifugoSubscription struct {
	Epoch        string `json:"epoch"`
	Offset       uint64 `json:"offset"`
	Recovered    bool   `json:"recovered"`
	Publications []struct {
		Data   json.RawMessage `json:"data"`
		Offset uint64          `json:"offset"`
	} `json:"publications"`
}

// centrifugoReply is what the greeting needs of a reply of Centrifugo's JSON protocol.
type centrifugoReply struct {
	ID    uint32 `json:"id"`
	Error *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Connect *struct {
		Subs map[string]centrifugoSubscription `json:"subs"`
	} `json:"connect"`
	Subscribe *centrifugoSubscription `json:"subscribe"`
}

var (
	// centrifugoPing is Centrifugo's ping (an empty reply), and the client's pong: a client
	// that does not answer within the pong timeout is disconnected.
	centrifugoPing = []byte(`{}`)
	pushStart      = []byte(`{"push":{"channel":"`)
	pubData        = []byte(`"pub":{"data":`)
)

// recoverRequest asks Centrifugo for what a stream missed since `from`.
func recoverRequest(from *position) map[string]any {
	return map[string]any{"recover": true, "epoch": from.epoch, "offset": from.offset}
}

// centrifugoGreet connects (and subscribes, with a channel) a Centrifugo socket: the connect
// command with the socket's token, then the reply that answers it. With `resume`, the
// subscription asks to recover from there (a server-side one in the connect command).
func centrifugoGreet(ctx context.Context, conn *websocket.Conn, socket socketPlan, resume *position) (greeting, error) {
	connect := map[string]any{"token": socket.token}
	if resume != nil && socket.channel == "" {
		connect["subs"] = map[string]any{resume.channel: recoverRequest(resume)}
	}
	command, _ := json.Marshal(map[string]any{"id": 1, "connect": connect})
	if err := conn.Write(ctx, websocket.MessageText, command); err != nil {
		return greeting{}, fmt.Errorf("connect command: %w", err)
	}
	reply, rest, err := centrifugoAwait(ctx, conn, 1)
	if err != nil {
		return greeting{}, fmt.Errorf("connect: %w", err)
	}
	if socket.channel == "" {
		// Nothing to read otherwise: a server not set to subscribe users to their personal
		// channel would leave the socket silent, and the run would count it as lost alerts.
		if reply.Connect == nil || len(reply.Connect.Subs) == 0 {
			return greeting{}, fmt.Errorf("connect reply lists no server-side subscription")
		}
		channel := ""
		if resume != nil {
			channel = resume.channel
		} else {
			for name := range reply.Connect.Subs {
				// The personal channel; were there several, the same one every time.
				channel = max(channel, name)
			}
		}
		subscribed, ok := reply.Connect.Subs[channel]
		if !ok {
			return greeting{}, fmt.Errorf("connect reply lists no subscription to %s", channel)
		}
		return subscribedGreeting(channel, subscribed, resume != nil, rest), nil
	}
	subscribe := map[string]any{"channel": socket.channel}
	if resume != nil {
		subscribe = recoverRequest(resume)
		subscribe["channel"] = socket.channel
	}
	command, _ = json.Marshal(map[string]any{"id": 2, "subscribe": subscribe})
	if err := conn.Write(ctx, websocket.MessageText, command); err != nil {
		return greeting{}, fmt.Errorf("subscribe command: %w", err)
	}
	reply, more, err := centrifugoAwait(ctx, conn, 2)
	if err != nil {
		return greeting{}, fmt.Errorf("subscribe %s: %w", socket.channel, err)
	}
	var subscribed centrifugoSubscription
	if reply.Subscribe != nil {
		subscribed = *reply.Subscribe
	}
	// What followed the connect reply came before the subscription: pings only.
	rest = append(append(append([]byte(nil), rest...), '\n'), more...)
	return subscribedGreeting(socket.channel, subscribed, resume != nil, rest), nil
}

// subscribedGreeting is the greeting a subscribe result makes: its place in the stream and,
// on a resume, the server's word on the recovery and what it replayed.
func subscribedGreeting(channel string, subscribed centrifugoSubscription, resumed bool, rest []byte) greeting {
	greet := greeting{
		pos:  position{channel: channel, epoch: subscribed.Epoch, offset: subscribed.Offset},
		rest: rest,
	}
	if resumed {
		recovered := subscribed.Recovered
		greet.recovered = &recovered
	}
	for _, publication := range subscribed.Publications {
		greet.replayed = append(greet.replayed, publication.Data)
		greet.pos.offset = max(greet.pos.offset, publication.Offset)
	}
	return greet
}

// centrifugoAwait reads until the reply to command `id` (answering pings on the way), and
// returns it with the lines after it in its frame.
func centrifugoAwait(ctx context.Context, conn *websocket.Conn, id uint32) (centrifugoReply, []byte, error) {
	for {
		_, frame, err := conn.Read(ctx)
		if err != nil {
			return centrifugoReply{}, nil, err
		}
		for len(frame) > 0 {
			line := frame
			if end := bytes.IndexByte(frame, '\n'); end >= 0 {
				line, frame = frame[:end], frame[end+1:]
			} else {
				frame = nil
			}
			line = bytes.TrimSpace(line)
			if bytes.Equal(line, centrifugoPing) {
				if err := conn.Write(ctx, websocket.MessageText, centrifugoPing); err != nil {
					return centrifugoReply{}, nil, err
				}
				continue
			}
			var reply centrifugoReply
			if json.Unmarshal(line, &reply) != nil || reply.ID != id {
				continue
			}
			if reply.Error != nil {
				return reply, nil, fmt.Errorf("error %d: %s", reply.Error.Code, reply.Error.Message)
			}
			return reply, frame, nil
		}
	}
}

// centrifugoFrame calls `each` for every alert published in a frame of Centrifugo's JSON
// protocol (replies one a line; the publication's line too) and returns the number of pings
// in it, each owed a pong.
func centrifugoFrame(frame []byte, each func(rid string, seq int64, line []byte)) int {
	pings := 0
	for len(frame) > 0 {
		line := frame
		if end := bytes.IndexByte(frame, '\n'); end >= 0 {
			line, frame = frame[:end], frame[end+1:]
		} else {
			frame = nil
		}
		line = bytes.TrimSpace(line)
		if bytes.Equal(line, centrifugoPing) {
			pings++
		} else if rid, seq, ok := centrifugoAlert(line); ok {
			each(rid, seq, line)
		}
	}
	return pings
}

// centrifugoAlert reads the alert a publication push carries, as searchID reads Percolert's
// own: without decoding when the data is encoded as Percolert encodes alerts (Centrifugo
// writes the publisher's data verbatim, after the push's channel), else by a full decode.
// An unescaped `"pub":{"data":` can only be the keys: the channel's quotes would be escaped.
func centrifugoAlert(line []byte) (string, int64, bool) {
	if bytes.HasPrefix(line, pushStart) {
		if at := bytes.Index(line, pubData); at >= 0 {
			if rid, seq, ok := quickAlert(line[at+len(pubData):]); ok {
				return rid, seq, true
			}
		}
	}
	return decodedPush(line)
}

// decodedPush is centrifugoAlert by a full JSON decode.
func decodedPush(line []byte) (string, int64, bool) {
	var reply struct {
		Push *struct {
			Pub *struct {
				Data json.RawMessage `json:"data"`
			} `json:"pub"`
		} `json:"push"`
	}
	if json.Unmarshal(line, &reply) != nil || reply.Push == nil || reply.Push.Pub == nil {
		return "", 0, false
	}
	return decoded(reply.Push.Pub.Data)
}

func readJSON(path string, into any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func subscribe(specPath, recordPath string) error {
	var spec subscribeSpec
	if err := readJSON(specPath, &spec); err != nil {
		return err
	}
	sockets, err := plans(spec)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	// Before the ready file: the harness may signal a round as soon as it sees it.
	rounds := make(chan os.Signal, 4)
	if spec.Reconnect != nil {
		signal.Notify(rounds, syscall.SIGUSR1)
		defer signal.Stop(rounds)
	}

	record, err := os.Create(recordPath)
	if err != nil {
		return err
	}
	defer record.Close()
	// One writer appends arrivals to the record, flushed every 100 ms, so the harness can
	// read each rate step's results while the sockets stay open for the next.
	arrivals := make(chan arrival, 1<<16)
	written := make(chan struct{})
	go func() {
		defer close(written)
		out := bufio.NewWriterSize(record, 1<<20)
		defer out.Flush()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case a, ok := <-arrivals:
				if !ok {
					return
				}
				at := float64(a.at.UnixMicro()) / 1e6
				if a.tag == "" {
					fmt.Fprintf(out, "%s %.6f %d\n", a.rid, at, a.seq)
				} else {
					fmt.Fprintf(out, "%s %.6f %d %d %s\n", a.rid, at, a.seq, a.socket, a.tag)
				}
			case <-tick.C:
				out.Flush()
			}
		}
	}()
	var greeted, failed atomic.Int64 // sockets greeted; sockets cut off while measuring
	var settled atomic.Int64         // sockets greeted, or failed with CountFailures
	allGreeted := make(chan struct{})
	var once sync.Once
	total := int64(len(sockets))
	markSettled := func() {
		if settled.Add(1) == total {
			once.Do(func() { close(allGreeted) })
		}
	}

	concurrency := spec.Concurrency
	if concurrency <= 0 {
		concurrency = 64
	}
	greetTimeout := time.Duration(spec.GreetTimeout * float64(time.Second))
	if greetTimeout <= 0 {
		greetTimeout = time.Minute
	}
	// Handshakes in flight are bounded (and paced by ConnectRate): a storm of thousands at
	// once would measure the accept queue, not the service.
	gate := make(chan struct{}, concurrency)
	var pace <-chan time.Time
	if spec.ConnectRate > 0 {
		ticker := time.NewTicker(time.Duration(float64(time.Second) / spec.ConnectRate))
		defer ticker.Stop()
		pace = ticker.C
	}
	dialErrors := make(chan error, len(sockets))
	var retries, neverGreeted atomic.Int64
	var timesMu sync.Mutex
	handshakeMs := make([]float64, 0, len(sockets))
	greetMs := make([]float64, 0, len(sockets))
	var reasons []string // with CountFailures, under timesMu
	began := time.Now()
	var connectSeconds atomic.Int64 // microseconds until the last socket was greeted
	var wg sync.WaitGroup
	var trackers []*tracker
	trackerOf := map[int]*tracker{}
	for _, socket := range sockets {
		if socket.tracked {
			trackerOf[socket.index] = &tracker{index: socket.index}
			trackers = append(trackers, trackerOf[socket.index])
		}
	}
	if spec.Reconnect != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dropRounds(ctx, rounds, *spec.Reconnect, trackers, arrivals)
		}()
	}
	for _, socket := range sockets {
		if pace != nil {
			select {
			case <-pace:
			case <-ctx.Done():
			}
		}
		gate <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A refused or reset dial, or a greeting past GreetTimeout, is tried again (as a
			// page reconnects), up to DialRetries times; the gate is held until the hello:
			// the greeting (watches and history read from Elasticsearch) is part of what a
			// connect costs the server.
			var conn *websocket.Conn
			var greet greeting
			var err error
			var shook time.Duration
			started := time.Now()
			for attempt := 0; ; attempt++ {
				started = time.Now()
				conn, shook, greet, err = connect(ctx, spec, socket, greetTimeout, nil)
				if err == nil || attempt >= spec.DialRetries || ctx.Err() != nil {
					break
				}
				retries.Add(1)
				time.Sleep(time.Duration(100*(attempt+1)) * time.Millisecond)
			}
			if err != nil {
				<-gate
				if !spec.CountFailures {
					dialErrors <- err
					return
				}
				neverGreeted.Add(1)
				timesMu.Lock()
				if len(reasons) < keptErrors {
					reasons = append(reasons, err.Error())
				}
				timesMu.Unlock()
				markSettled()
				return
			}
			<-gate
			greetTime := time.Since(started)
			timesMu.Lock()
			handshakeMs = append(handshakeMs, float64(shook.Microseconds())/1000)
			greetMs = append(greetMs, float64(greetTime.Microseconds())/1000)
			timesMu.Unlock()
			connectSeconds.Store(time.Since(began).Microseconds())
			greeted.Add(1)
			markSettled()
			t := trackerOf[socket.index]
			if t != nil {
				t.pos = greet.pos
			}
			run := session{
				ctx: ctx, spec: spec, socket: socket, tracker: t, arrivals: arrivals,
				greetTimeout: greetTimeout, closed: &failed,
			}
			run.serve(conn, greet)
		}()
	}
	if total == 0 {
		once.Do(func() { close(allGreeted) })
	}
	// Ready only once every socket has had its hello (Percolert reads watches and history
	// from Elasticsearch for it), so measurements start after the connection storm.
	select {
	case <-allGreeted:
	case err := <-dialErrors:
		return fmt.Errorf("socket: %w", err)
	case <-ctx.Done():
	}
	timesMu.Lock()
	stats := connectStats{
		Sockets:        greeted.Load(),
		ConnectSeconds: float64(connectSeconds.Load()) / 1e6,
		DialRetries:    retries.Load(),
		HandshakeMs:    percentiles(handshakeMs),
		GreetMs:        percentiles(append([]float64(nil), greetMs...)),
		Failed:         neverGreeted.Load(),
		Errors:         append([]string{}, reasons...),
	}
	for _, ms := range greetMs {
		if ms > 1000 {
			stats.GreetsOver1s++
		}
	}
	timesMu.Unlock()
	ready, _ := json.Marshal(stats)
	// Written whole, then renamed: the harness polls for the name.
	if err := os.WriteFile(recordPath+".ready.tmp", ready, 0o644); err != nil {
		return err
	}
	if err := os.Rename(recordPath+".ready.tmp", recordPath+".ready"); err != nil {
		return err
	}
	<-ctx.Done()
	wg.Wait()
	close(arrivals)
	<-written
	if n := failed.Load(); n > 0 {
		fmt.Fprintf(os.Stderr, "wsload: %d sockets were closed by the server\n", n)
	}
	return nil
}

type searchPlan struct {
	Base     string  `json:"base"`
	Warmup   string  `json:"warmup"`
	Rate     float64 `json:"rate"`
	Requests []struct {
		Rid  string `json:"rid"`
		Path string `json:"path"`
	} `json:"requests"`
}

func search(planPath, resultPath string) error {
	var plan searchPlan
	if err := readJSON(planPath, &plan); err != nil {
		return err
	}
	jar, _ := cookiejar.New(nil)
	client := &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        512,
			MaxIdleConnsPerHost: 512,
			IdleConnTimeout:     time.Minute,
		},
	}
	// One session for every search, as one shopper's browser would have.
	if plan.Warmup != "" {
		response, err := client.Get(plan.Base + plan.Warmup)
		if err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		io.Copy(io.Discard, response.Body)
		response.Body.Close()
	}
	lines := make([]string, len(plan.Requests))
	var wg sync.WaitGroup
	begin := time.Now()
	for i, request := range plan.Requests {
		// Open loop: request i goes at begin + i/rate whatever happened to earlier ones.
		time.Sleep(time.Until(begin.Add(time.Duration(float64(i) / plan.Rate * float64(time.Second)))))
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent := time.Now()
			status := 0
			made := "-" // when the server made the search (its answer's `at`), as alerts name it
			response, err := client.Get(plan.Base + request.Path)
			if err == nil {
				var answer struct {
					At string `json:"at"`
				}
				body, _ := io.ReadAll(response.Body)
				response.Body.Close()
				status = response.StatusCode
				if json.Unmarshal(body, &answer) == nil && answer.At != "" &&
					!strings.ContainsAny(answer.At, " \n") {
					made = answer.At
				}
			}
			elapsed := time.Since(sent)
			lines[i] = fmt.Sprintf("%s %.6f %.3f %d %s\n", request.Rid,
				float64(sent.UnixMicro())/1e6, float64(elapsed.Microseconds())/1000, status, made)
		}()
	}
	wg.Wait()
	return os.WriteFile(resultPath, []byte(strings.Join(lines, "")), 0o644)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: wsload subscribe SPEC.json RECORD.txt | search PLAN.json RESULT.txt")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "subscribe":
		err = subscribe(os.Args[2], os.Args[3])
	case "search":
		err = search(os.Args[2], os.Args[3])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "wsload:", err)
		os.Exit(1)
	}
}
