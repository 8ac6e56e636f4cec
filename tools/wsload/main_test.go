package main

import "testing"

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
