package emulator

import (
	"embed"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"
)

//go:embed templates/*.html
var templateFS embed.FS

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"fmtTime": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format("2006-01-02 15:04 MST")
	},
}).ParseFS(templateFS, "templates/*.html"))

// simulatorRoutes registers the buyer simulator: a small web page that plays
// the AWS Marketplace side of the buyer journey.
func (s *Server) simulatorRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /emulator/{$}", s.handleSimulatorIndex)
	mux.HandleFunc("POST /emulator/ui/buyers", func(w http.ResponseWriter, r *http.Request) {
		_, err := s.AddBuyer(Buyer{AccountID: strings.TrimSpace(r.FormValue("accountId")), Name: strings.TrimSpace(r.FormValue("name"))})
		s.redirectOrFail(w, r, err)
	})
	mux.HandleFunc("POST /emulator/ui/subscribe", s.handleSimulatorSubscribe)
	mux.HandleFunc("POST /emulator/ui/subscriptions/{id}/setup", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.NewToken(r.PathValue("id"))
		if err != nil {
			s.redirectOrFail(w, r, err)
			return
		}
		renderSetup(w, res)
	})
	mux.HandleFunc("POST /emulator/ui/subscriptions/{id}/{action}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		var err error
		switch r.PathValue("action") {
		case "cancel":
			_, err = s.Cancel(id)
		case "expire":
			_, err = s.Expire(id)
		case "fail-payment":
			_, err = s.FailPayment(id)
		case "entitlements":
			var e map[string]int32
			e, err = parseEntitlements(r, "ent.")
			if err == nil {
				_, err = s.SetEntitlements(id, e)
			}
		default:
			http.NotFound(w, r)
			return
		}
		s.redirectOrFail(w, r, err)
	})
	mux.HandleFunc("POST /emulator/ui/clock", func(w http.ResponseWriter, r *http.Request) {
		d, err := time.ParseDuration(r.FormValue("advance"))
		if err == nil {
			err = s.ChangeClock(ClockChange{Advance: Duration(d)})
		}
		s.redirectOrFail(w, r, err)
	})
}

type simulatorPage struct {
	Products      []Product
	Buyers        []Buyer
	Subscriptions []Subscription
	Now           time.Time
	Error         string
}

func (s *Server) handleSimulatorIndex(w http.ResponseWriter, r *http.Request) {
	s.RunDue()
	page := simulatorPage{Products: s.Products(), Buyers: s.Buyers(), Subscriptions: s.Subscriptions(), Now: s.Clock.Now(), Error: r.URL.Query().Get("error")}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := templates.ExecuteTemplate(w, "index.html", page); err != nil {
		s.log.Error("render simulator", "err", err)
	}
}

func (s *Server) handleSimulatorSubscribe(w http.ResponseWriter, r *http.Request) {
	ents, err := parseEntitlements(r, "ent."+r.FormValue("productCode")+".")
	if err != nil {
		s.redirectOrFail(w, r, err)
		return
	}
	res, err := s.Subscribe(SubscribeOptions{
		ProductCode:    r.FormValue("productCode"),
		BuyerAccountID: r.FormValue("buyerAccountId"),
		FreeTrial:      r.FormValue("freeTrial") != "",
		Entitlements:   ents,
	})
	if err != nil {
		s.redirectOrFail(w, r, err)
		return
	}
	renderSetup(w, res)
}

// renderSetup shows the "Set up your account" step. Its button makes the
// buyer's browser form-POST the registration token to the seller's
// fulfillment URL, as AWS Marketplace does.
func renderSetup(w http.ResponseWriter, res SubscribeResult) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = templates.ExecuteTemplate(w, "setup.html", res)
}

// parseEntitlements reads form fields named <prefix><dimension>.
func parseEntitlements(r *http.Request, prefix string) (map[string]int32, error) {
	if err := r.ParseForm(); err != nil {
		return nil, err
	}
	var out map[string]int32
	for k, vs := range r.PostForm {
		dim, ok := strings.CutPrefix(k, prefix)
		if !ok || len(vs) == 0 || strings.TrimSpace(vs[0]) == "" {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(vs[0]), 10, 32)
		if err != nil || n < 0 {
			return nil, errorString("invalid: entitlement for " + dim + " must be a whole number ≥ 0")
		}
		if out == nil {
			out = map[string]int32{}
		}
		out[dim] = int32(n)
	}
	return out, nil
}

func (s *Server) redirectOrFail(w http.ResponseWriter, r *http.Request, err error) {
	target := "/emulator/"
	if err != nil {
		target += "?error=" + template.URLQueryEscaper(err.Error())
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}
