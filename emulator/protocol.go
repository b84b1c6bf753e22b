package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// apiError is an AWS error as it goes on the wire: {"__type": Type, "message": Message}.
type apiError struct {
	Type    string
	Message string
	Status  int
}

func (e *apiError) Error() string { return e.Type + ": " + e.Message }

func newAPIError(typ, format string, args ...any) *apiError {
	status := http.StatusBadRequest
	switch typ {
	case "InternalServiceErrorException":
		status = http.StatusInternalServerError
	case "IdempotencyConflictException":
		status = http.StatusConflict
	case "ServiceUnavailable":
		status = http.StatusServiceUnavailable
	}
	return &apiError{Type: typ, Message: fmt.Sprintf(format, args...), Status: status}
}

// validationError is the answer for unmodelled constraint violations.
// ASSUMPTION: AWS documents no wire error for these; coral services answer
// 400 ValidationException, and so do we.
func validationError(format string, args ...any) *apiError {
	return newAPIError("ValidationException", "1 validation error detected: "+format, args...)
}

// protocol encodes requests and responses for one wire protocol.
type protocol interface {
	decode(body []byte, v any) error
	write(w http.ResponseWriter, status int, v any)
	writeError(w http.ResponseWriter, e *apiError)
}

type jsonProtocol struct{}

func (jsonProtocol) decode(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON object")
	}
	return nil
}

func (jsonProtocol) write(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"__type":"InternalServiceErrorException","message":"encoding response"}`)
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (p jsonProtocol) writeError(w http.ResponseWriter, e *apiError) {
	if e.Type == "ServiceUnavailable" {
		writeBare503(w)
		return
	}
	p.write(w, e.Status, map[string]string{"__type": e.Type, "message": e.Message})
}

type cborProtocol struct{}

var cborDec = func() cbor.DecMode {
	m, err := cbor.DecOptions{
		DefaultMapType:   reflect.TypeOf(map[string]any(nil)),
		MaxNestedLevels:  32,
		MaxArrayElements: 1 << 16,
		MaxMapPairs:      1 << 16,
		IndefLength:      cbor.IndefLengthAllowed,
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		TimeTag:          cbor.DecTagOptional,
		IntDec:           cbor.IntDecConvertSigned,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return m
}()

var cborEnc = func() cbor.EncMode {
	m, err := cbor.EncOptions{Sort: cbor.SortNone}.EncMode()
	if err != nil {
		panic(err)
	}
	return m
}()

func (cborProtocol) decode(body []byte, v any) error {
	if len(body) == 0 {
		return nil
	}
	// Decode generically, then map onto the same structs the JSON protocol
	// uses, so both protocols share one set of shapes and validations.
	var generic any
	if err := cborDec.Unmarshal(body, &generic); err != nil {
		return err
	}
	if _, ok := generic.(map[string]any); !ok {
		return errors.New("top-level CBOR value is not a map")
	}
	b, err := json.Marshal(generic)
	if err != nil {
		return err
	}
	return jsonProtocol{}.decode(b, v)
}

func (cborProtocol) write(w http.ResponseWriter, status int, v any) {
	b, err := cborEnc.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = cborEnc.Marshal(map[string]string{"__type": "InternalServiceErrorException", "message": "encoding response"})
	}
	w.Header().Set("Smithy-Protocol", "rpc-v2-cbor")
	w.Header().Set("Content-Type", "application/cbor")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (p cborProtocol) writeError(w http.ResponseWriter, e *apiError) {
	if e.Type == "ServiceUnavailable" {
		writeBare503(w)
		return
	}
	p.write(w, e.Status, map[string]string{"__type": e.Type, "message": e.Message})
}

func writeBare503(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusServiceUnavailable)
	_, _ = io.WriteString(w, "Service Unavailable")
}

// operation is one API operation: it decodes its input with c and answers.
type operation func(c call, body []byte) (any, *apiError)

func (s *Server) operations() map[string]operation {
	return map[string]operation{
		"AWSMPMeteringService.ResolveCustomer":    s.resolveCustomer,
		"AWSMPMeteringService.BatchMeterUsage":    s.batchMeterUsage,
		"AWSMPMeteringService.MeterUsage":         s.meterUsageOp,
		"AWSMPMeteringService.RegisterUsage":      s.registerUsage,
		"AWSMPEntitlementService.GetEntitlements": s.getEntitlements,
		agreementService + "SearchAgreements":     s.searchAgreements,
		agreementService + "DescribeAgreement":    s.describeAgreement,
		agreementService + "GetAgreementTerms":    s.getAgreementTerms,
	}
}

// serveJSON handles awsJson1_1: POST / with X-Amz-Target.
func (s *Server) serveJSON(w http.ResponseWriter, r *http.Request) {
	s.serve(w, r, jsonProtocol{}, r.Header.Get("X-Amz-Target"))
}

// serveCBOR handles Smithy RPC v2 CBOR: POST /service/{service}/operation/{operation}.
func (s *Server) serveCBOR(w http.ResponseWriter, r *http.Request) {
	target := r.PathValue("service") + "." + r.PathValue("operation")
	if r.Header.Get("Smithy-Protocol") != "rpc-v2-cbor" {
		setCommonHeaders(w)
		cborProtocol{}.writeError(w, newAPIError("SerializationException", "missing Smithy-Protocol: rpc-v2-cbor header"))
		return
	}
	s.serve(w, r, cborProtocol{}, target)
}

func setCommonHeaders(w http.ResponseWriter) {
	w.Header().Set("x-amzn-RequestId", newID())
	w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, p protocol, target string) {
	setCommonHeaders(w)
	s.RunDue()
	op, ok := s.operations()[target]
	name := target[strings.LastIndexByte(target, '.')+1:]
	if !ok {
		p.writeError(w, newAPIError("UnknownOperationException", "unknown operation %q", target))
		return
	}
	// ASSUMPTION: only the metering operations are on the metering endpoint and
	// GetEntitlements on the entitlement endpoint; the emulator serves both on
	// one listener, so it does not check which host name was used.
	if _, isCBOR := p.(cborProtocol); isCBOR && !strings.HasPrefix(target, "AWSMPEntitlementService.") && !strings.HasPrefix(target, agreementService) {
		p.writeError(w, newAPIError("UnknownOperationException", "operation %q is not served over rpc-v2-cbor", target))
		return
	}
	if err := checkSigningScope(r); err != nil {
		p.writeError(w, err)
		return
	}
	s.mu.Lock()
	s.calls[name]++
	s.mu.Unlock()

	d := s.Faults.decide(name)
	if d.latency > 0 {
		select {
		case <-time.After(d.latency):
		case <-r.Context().Done():
			return
		}
	}
	if d.err != "" && !d.afterProcessing {
		s.log.Info("emulator fault", "operation", name, "error", d.err)
		p.writeError(w, newAPIError(d.err, "injected fault"))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxRequestBytes+1))
	if err != nil {
		p.writeError(w, newAPIError("SerializationException", "reading request: %v", err))
		return
	}
	if int64(len(body)) > s.cfg.MaxRequestBytes {
		p.writeError(w, validationError("request size exceeds %d bytes", s.cfg.MaxRequestBytes))
		return
	}
	out, apiErr := op(call{protocol: p, unprocessedRate: d.unprocessedRate, accessKey: accessKeyOf(r)}, body)
	if apiErr != nil {
		s.log.Info("emulator call", "operation", name, "error", apiErr.Type, "message", apiErr.Message)
		p.writeError(w, apiErr)
		return
	}
	if d.err != "" {
		s.log.Info("emulator fault after processing", "operation", name, "error", d.err)
		p.writeError(w, newAPIError(d.err, "injected fault"))
		return
	}
	s.log.Debug("emulator call", "operation", name)
	p.write(w, http.StatusOK, out)
}

// call is one API call: its wire protocol and the fault decisions for it.
type call struct {
	protocol
	unprocessedRate float64
	// accessKey is the access key id the request was signed with ("" unsigned).
	accessKey string
}

// callerAccount is the AWS account a request was signed by. The emulator
// does not verify signatures; by its convention an access key id of 12
// digits is that account (sign as a buyer with the buyer's account id as
// the access key id), any other is the seller's.
func (c call) callerAccount() string {
	if len(c.accessKey) == 12 && strings.Trim(c.accessKey, "0123456789") == "" {
		return c.accessKey
	}
	return SellerAccountID
}

// accessKeyOf reads the access key id from a SigV4 Authorization header.
func accessKeyOf(r *http.Request) string {
	auth := r.Header.Get("Authorization")
	i := strings.Index(auth, "Credential=")
	if i < 0 {
		return ""
	}
	cred := auth[i+len("Credential="):]
	key, _, _ := strings.Cut(cred, "/")
	return key
}

// checkSigningScope refuses requests whose SigV4 scope names another service.
// Signatures themselves are not verified: any credentials work.
func checkSigningScope(r *http.Request) *apiError {
	auth := r.Header.Get("Authorization")
	if auth == "" {
		return nil // unsigned requests are accepted (e.g. curl against the emulator)
	}
	i := strings.Index(auth, "Credential=")
	if i < 0 {
		return newAPIError("IncompleteSignatureException", "Authorization header has no Credential")
	}
	cred := auth[i+len("Credential="):]
	if j := strings.IndexByte(cred, ','); j >= 0 {
		cred = cred[:j]
	}
	parts := strings.Split(cred, "/")
	if len(parts) != 5 || parts[3] != "aws-marketplace" {
		return newAPIError("InvalidSignatureException", "credential scope %q: the service must be aws-marketplace", cred)
	}
	return nil
}

// epochTime is a timestamp that travels as epoch seconds in JSON (integer or
// fractional) and as CBOR tag 1 wrapping a float64.
type epochTime struct{ time.Time }

func (t *epochTime) UnmarshalJSON(b []byte) error {
	s := string(b)
	if s == "null" {
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		// CBOR tag-1 values arrive here as RFC 3339 strings via the generic decoder.
		var str string
		if json.Unmarshal(b, &str) == nil {
			if tt, perr := time.Parse(time.RFC3339Nano, str); perr == nil {
				t.Time = tt.UTC()
				return nil
			}
		}
		return fmt.Errorf("timestamp %s is not epoch seconds", s)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) || f < -62135596800 || f > 253402300799 {
		return fmt.Errorf("timestamp %s out of range", s)
	}
	sec, frac := math.Modf(f)
	t.Time = time.Unix(int64(sec), int64(math.Round(frac*1e9))).UTC()
	return nil
}

func (t epochTime) MarshalJSON() ([]byte, error) {
	if t.Nanosecond() == 0 {
		return []byte(strconv.FormatInt(t.Unix(), 10)), nil
	}
	return []byte(strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', -1, 64)), nil
}

func (t epochTime) MarshalCBOR() ([]byte, error) {
	return cborEnc.Marshal(cbor.Tag{Number: 1, Content: float64(t.UnixNano()) / 1e9})
}

func (t epochTime) IsZero() bool { return t.Time.IsZero() }
