package marketplace

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// closedDrainBody is a request body as smithy-go's is once the SDK closed it
// while net/http still drains it: Read serves the bytes, WriteTo (used for
// the drain after Content-Length bytes) answers io.EOF.
type closedDrainBody struct{ r *bytes.Reader }

func (b closedDrainBody) Read(p []byte) (int, error)       { return b.r.Read(p) }
func (b closedDrainBody) WriteTo(io.Writer) (int64, error) { return 0, io.EOF }
func (b closedDrainBody) Close() error                     { return nil }

// TestGuardedHTTPClient: net/http fails the request (and closes its
// connection) when the drain answers io.EOF; through the guard the same
// request succeeds.
func TestGuardedHTTPClient(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	}))
	defer srv.Close()
	do := func(c httpClient) (string, error) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
		req.Body, req.ContentLength = closedDrainBody{bytes.NewReader([]byte("payload"))}, 7
		resp, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if _, err := do(&http.Client{Transport: &http.Transport{}}); err == nil {
		t.Fatal("the bare client succeeded: the race this guards against is gone from net/http; the guard may be removable")
	}
	if got, err := do(guard(&http.Client{Transport: &http.Transport{}})); err != nil || got != "payload" {
		t.Fatalf("guarded: %q, %v", got, err)
	}
}
