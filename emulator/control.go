package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// controlRoutes registers the JSON control API used by tests, the CLI and
// the buyer simulator. It is not part of any AWS API.
func (s *Server) controlRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /emulator/api/state", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"products": s.Products(), "buyers": s.Buyers(), "subscriptions": s.Subscriptions(),
			"now": s.Clock.Now(),
		})
	})
	mux.HandleFunc("POST /emulator/api/products", func(w http.ResponseWriter, r *http.Request) {
		var p Product
		if decodeControl(w, r, &p) {
			v, err := s.AddProduct(p)
			respond(w, http.StatusCreated, v, err)
		}
	})
	mux.HandleFunc("POST /emulator/api/buyers", func(w http.ResponseWriter, r *http.Request) {
		var b Buyer
		if decodeControl(w, r, &b) {
			v, err := s.AddBuyer(b)
			respond(w, http.StatusCreated, v, err)
		}
	})
	mux.HandleFunc("POST /emulator/api/subscriptions", func(w http.ResponseWriter, r *http.Request) {
		var o SubscribeOptions
		if decodeControl(w, r, &o) {
			v, err := s.Subscribe(o)
			respond(w, http.StatusCreated, v, err)
		}
	})
	mux.HandleFunc("POST /emulator/api/subscriptions/{id}/token", func(w http.ResponseWriter, r *http.Request) {
		v, err := s.NewToken(r.PathValue("id"))
		respond(w, http.StatusOK, v, err)
	})
	mux.HandleFunc("POST /emulator/api/subscriptions/{id}/entitlements", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Entitlements map[string]int32 `json:"entitlements"`
		}
		if decodeControl(w, r, &in) {
			v, err := s.SetEntitlements(r.PathValue("id"), in.Entitlements)
			respond(w, http.StatusOK, v, err)
		}
	})
	for action, fn := range map[string]func(string) (Subscription, error){
		"cancel": s.Cancel, "expire": s.Expire, "fail-payment": s.FailPayment,
	} {
		mux.HandleFunc("POST /emulator/api/subscriptions/{id}/"+action, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r.PathValue("id"))
			respond(w, http.StatusOK, v, err)
		})
	}
	mux.HandleFunc("GET /emulator/api/billed", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Billed(r.URL.Query().Get("account")))
	})
	mux.HandleFunc("GET /emulator/api/calls", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Calls())
	})
	mux.HandleFunc("GET /emulator/api/notifications", func(w http.ResponseWriter, r *http.Request) {
		after := 0
		if v := r.URL.Query().Get("after"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "after must be a non-negative integer"})
				return
			}
			after = n
		}
		s.RunDue()
		writeJSON(w, http.StatusOK, s.Notifications(after))
	})
	mux.HandleFunc("POST /emulator/api/notifications/drop", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Count   int    `json:"count"`
			Channel string `json:"channel"`
		}
		if decodeControl(w, r, &in) {
			if err := s.DropNotifications(in.Count, in.Channel); err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"count": in.Count, "channel": in.Channel, "dropped": s.Dropped()})
		}
	})
	mux.HandleFunc("GET /emulator/api/clock", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"now": s.Clock.Now()})
	})
	mux.HandleFunc("POST /emulator/api/clock", func(w http.ResponseWriter, r *http.Request) {
		var in ClockChange
		if decodeControl(w, r, &in) {
			if err := s.ChangeClock(in); err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, map[string]any{"now": s.Clock.Now()})
		}
	})
	mux.HandleFunc("POST /emulator/api/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if decodeControl(w, r, &f) {
			if err := s.Faults.Add(f); err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, http.StatusCreated, f)
		}
	})
	mux.HandleFunc("DELETE /emulator/api/faults", func(w http.ResponseWriter, r *http.Request) {
		s.Faults.Clear()
		w.WriteHeader(http.StatusNoContent)
	})
}

// ClockChange sets, advances or resumes the emulator clock. Scheduled
// changes that fall due are fired.
type ClockChange struct {
	Set     *time.Time `json:"set,omitempty"`
	Advance Duration   `json:"advance,omitempty"`
	Resume  bool       `json:"resume,omitempty"`
}

// ChangeClock applies a ClockChange.
func (s *Server) ChangeClock(c ClockChange) error {
	if c.Advance < 0 {
		return fmt.Errorf("%w: the clock only moves forward", ErrInvalid)
	}
	if c.Set != nil {
		s.Clock.Set(*c.Set)
	}
	if c.Advance > 0 {
		s.Clock.Advance(time.Duration(c.Advance))
	}
	if c.Resume {
		s.Clock.Resume()
	}
	s.RunDue()
	return nil
}

func decodeControl(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid JSON body: " + err.Error()})
		return false
	}
	return true
}

// respond writes v with status, or the error's status when err is set.
func respond[T any](w http.ResponseWriter, status int, v T, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, status, v)
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrConflict):
		status = http.StatusConflict
	case errors.Is(err, ErrInvalid):
		status = http.StatusBadRequest
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
