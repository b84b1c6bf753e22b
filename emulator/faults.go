package emulator

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Fault is an injected failure for one operation (or "*" for all).
type Fault struct {
	// Operation is an API operation name such as BatchMeterUsage, or "*".
	Operation string `json:"operation"`
	// Error is the __type to answer with: ThrottlingException (400),
	// InternalServiceErrorException (500), DisabledApiException (400), or
	// ServiceUnavailable (a bare 503 without an AWS error body).
	// Empty means no error (latency or unprocessed records only).
	Error string `json:"error,omitempty"`
	// Rate is the probability (0..1] that a call is affected; 0 means always.
	Rate float64 `json:"rate,omitempty"`
	// Count limits how many calls are affected; 0 means unlimited.
	Count int `json:"count,omitempty"`
	// Latency delays every affected call.
	Latency Duration `json:"latency,omitempty"`
	// UnprocessedRate is, for BatchMeterUsage, the probability that each
	// record is returned in UnprocessedRecords instead of being processed.
	UnprocessedRate float64 `json:"unprocessedRate,omitempty"`
	// AfterProcessing applies the error after the request took effect, as when
	// a response is lost on the way back (BatchMeterUsage only).
	AfterProcessing bool `json:"afterProcessing,omitempty"`
}

// Duration is a time.Duration that reads and writes as "1.5s" in JSON.
type Duration time.Duration

// MarshalText writes d as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads a Go duration string such as "250ms".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// Faults holds the injected faults. The zero set injects nothing.
type Faults struct {
	mu    sync.Mutex
	rules []*Fault
	rng   *rand.Rand
}

// NewFaults returns an empty fault set with a random seed.
func NewFaults() *Faults {
	return &Faults{rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

// Seed makes fault decisions repeatable.
func (f *Faults) Seed(seed uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// Add injects a fault.
func (f *Faults) Add(fault Fault) error {
	switch fault.Error {
	case "", "ThrottlingException", "InternalServiceErrorException", "ServiceUnavailable", "DisabledApiException":
	default:
		return fmt.Errorf("%w: fault error %q: want ThrottlingException, InternalServiceErrorException, ServiceUnavailable or DisabledApiException", ErrInvalid, fault.Error)
	}
	if fault.Rate < 0 || fault.Rate > 1 || fault.UnprocessedRate < 0 || fault.UnprocessedRate > 1 {
		return fmt.Errorf("%w: fault rates must be between 0 and 1", ErrInvalid)
	}
	if fault.Operation == "" {
		fault.Operation = "*"
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, &fault)
	return nil
}

// Clear removes every fault.
func (f *Faults) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

// decision is what the faults say about one call.
type decision struct {
	latency         time.Duration
	err             string
	afterProcessing bool
	unprocessedRate float64
}

func (f *Faults) decide(op string) decision {
	f.mu.Lock()
	defer f.mu.Unlock()
	var d decision
	for _, r := range f.rules {
		if r.Operation != "*" && r.Operation != op {
			continue
		}
		if r.Count < 0 {
			continue // used up
		}
		if r.Error != "" && d.err != "" {
			continue // one error per call; leave this rule for a later call
		}
		if r.Rate > 0 && f.rng.Float64() >= r.Rate {
			continue
		}
		if r.Count > 0 {
			r.Count--
			if r.Count == 0 {
				r.Count = -1
			}
		}
		d.latency += time.Duration(r.Latency)
		if d.err == "" && r.Error != "" {
			d.err = r.Error
			d.afterProcessing = r.AfterProcessing
		}
		if r.UnprocessedRate > d.unprocessedRate {
			d.unprocessedRate = r.UnprocessedRate
		}
	}
	return d
}

func (f *Faults) unprocessed(rate float64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rng.Float64() < rate
}
