// Package awslambda adapts the runtime-neutral core to AWS Lambda events. It
// is the only package that imports aws-lambda-go:
//
//   - HTTP API (API Gateway, payload 2.0) → the same http.Handler `mpsaas serve` uses;
//   - SQS batches of SNS notifications → subscription.Service.HandleMessage, with
//     partial batch failures so only failed messages are retried (then dead-lettered);
//   - EventBridge agreement/license events → the same HandleMessage;
//   - scheduled events → a metering run or an access-change dispatch.
package awslambda

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"

	"github.com/aws/aws-lambda-go/events"
)

// HTTPHandler serves HTTP API (payload format 2.0) requests with h.
func HTTPHandler(h http.Handler) func(context.Context, events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error) {
	return func(ctx context.Context, ev events.APIGatewayV2HTTPRequest) (events.APIGatewayV2HTTPResponse, error) {
		req, err := toRequest(ctx, ev)
		if err != nil {
			return events.APIGatewayV2HTTPResponse{StatusCode: http.StatusBadRequest, Body: "bad request"}, nil
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return toResponse(rec), nil
	}
}

func toRequest(ctx context.Context, ev events.APIGatewayV2HTTPRequest) (*http.Request, error) {
	body := []byte(ev.Body)
	if ev.IsBase64Encoded {
		b, err := base64.StdEncoding.DecodeString(ev.Body)
		if err != nil {
			return nil, fmt.Errorf("decode body: %w", err)
		}
		body = b
	}
	path := ev.RawPath
	if path == "" {
		path = ev.RequestContext.HTTP.Path
	}
	// A stage other than $default prefixes the path.
	if st := ev.RequestContext.Stage; st != "" && st != "$default" {
		path = strings.TrimPrefix(path, "/"+st)
		if path == "" {
			path = "/"
		}
	}
	u := &url.URL{Path: path, RawQuery: ev.RawQueryString}
	method := ev.RequestContext.HTTP.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, v := range ev.Headers {
		req.Header.Set(k, v)
	}
	if len(ev.Cookies) > 0 {
		req.Header.Set("Cookie", strings.Join(ev.Cookies, "; "))
	}
	req.Host = ev.RequestContext.DomainName
	if req.Host == "" {
		req.Host = req.Header.Get("Host")
	}
	req.RemoteAddr = ev.RequestContext.HTTP.SourceIP
	req.ContentLength = int64(len(body))
	return req, nil
}

func toResponse(rec *httptest.ResponseRecorder) events.APIGatewayV2HTTPResponse {
	res := rec.Result()
	body, _ := io.ReadAll(res.Body)
	out := events.APIGatewayV2HTTPResponse{StatusCode: res.StatusCode, Headers: map[string]string{}}
	for k, vs := range res.Header {
		if k == "Set-Cookie" {
			out.Cookies = append(out.Cookies, vs...)
			continue
		}
		out.Headers[k] = strings.Join(vs, ", ")
	}
	ct := res.Header.Get("Content-Type")
	if isText(ct) {
		out.Body = string(body)
	} else {
		out.Body = base64.StdEncoding.EncodeToString(body)
		out.IsBase64Encoded = true
	}
	return out
}

func isText(ct string) bool {
	ct = strings.ToLower(ct)
	return ct == "" || strings.HasPrefix(ct, "text/") || strings.Contains(ct, "json") || strings.Contains(ct, "xml") ||
		strings.Contains(ct, "javascript") || strings.Contains(ct, "x-www-form-urlencoded")
}

// MessageHandler handles one notification body.
type MessageHandler interface {
	HandleMessage(ctx context.Context, body []byte) error
}

// SQSHandler handles a batch of SQS messages (SNS envelopes, or EventBridge
// events delivered through a queue) one by one and reports the failed ones,
// so that only they come back; after the queue's maxReceiveCount they go to
// its dead-letter queue.
func SQSHandler(h MessageHandler, log *slog.Logger) func(context.Context, events.SQSEvent) (events.SQSEventResponse, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(ctx context.Context, ev events.SQSEvent) (events.SQSEventResponse, error) {
		var res events.SQSEventResponse
		for _, m := range ev.Records {
			if err := h.HandleMessage(ctx, []byte(m.Body)); err != nil {
				log.WarnContext(ctx, "message failed", "messageId", m.MessageId, "err", err)
				res.BatchItemFailures = append(res.BatchItemFailures, events.SQSBatchItemFailure{ItemIdentifier: m.MessageId})
			}
		}
		return res, nil
	}
}

// EventBridgeHandler handles an EventBridge event delivered to the function
// by a rule. An error makes Lambda retry the event (then send it to the
// function's dead-letter destination).
func EventBridgeHandler(h MessageHandler) func(context.Context, json.RawMessage) error {
	return func(ctx context.Context, ev json.RawMessage) error {
		return h.HandleMessage(ctx, ev)
	}
}

// ScheduledHandler runs fn for every scheduled event (the event's content
// does not matter).
func ScheduledHandler(fn func(context.Context) error) func(context.Context, events.EventBridgeEvent) error {
	return func(ctx context.Context, _ events.EventBridgeEvent) error {
		return fn(ctx)
	}
}
