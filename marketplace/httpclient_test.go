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

// recordingClient notes the body it was given.
type recordingClient struct{ body io.ReadCloser }

func (c *recordingClient) Do(r *http.Request) (*http.Response, error) {
	c.body = r.Body
	return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
}

// TestGuardedHTTPClient: the guard hands net/http a body without WriterTo,
// so a body that answers WriteTo with io.EOF (smithy-go's, closed under
// net/http's drain) is drained with Read instead, and the request
// succeeds every time. (Without the guard, net/http takes that io.EOF for
// a write error and closes the connection, sometimes under the response:
// the failure TestGetEntitlementsAllPagesBothProtocols showed under load.)
func TestGuardedHTTPClient(t *testing.T) {
	rec := &recordingClient{}
	req, _ := http.NewRequest(http.MethodPost, "http://example.invalid", nil)
	req.Body = closedDrainBody{bytes.NewReader([]byte("payload"))}
	if _, err := guard(rec).Do(req); err != nil {
		t.Fatal(err)
	}
	if _, ok := rec.body.(io.WriterTo); ok {
		t.Fatal("the guarded body still offers WriterTo")
	}
	if guard(guard(rec)) != guard(rec) {
		t.Error("guarding twice wraps twice")
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	}))
	defer srv.Close()
	c := guard(&http.Client{Transport: &http.Transport{}})
	for i := 0; i < 200; i++ {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, nil)
		req.Body, req.ContentLength = closedDrainBody{bytes.NewReader([]byte("payload"))}, 7
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "payload" {
			t.Fatalf("request %d: %q, %v", i, b, err)
		}
	}
}
