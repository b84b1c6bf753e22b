package marketplace

import (
	"io"
	"net/http"
)

// guardedHTTPClient works around a race between the SDK and net/http that
// fails a call whose answer already arrived.
//
// smithy-go closes a request's body as soon as the response headers are in
// (transport/http/client.go), while net/http's writeLoop may still be
// finishing the request: after copying Content-Length bytes it drains the
// body through WriterTo, and smithy-go's closed body answers WriteTo with
// io.EOF. net/http takes that for a write error and closes the connection,
// under the SDK reading the response: "deserialization failed ... use of
// closed network connection" on a 200 (aws/aws-sdk-go-v2 issues 1825, 2737).
// Reproduced here under CPU load (TestGetEntitlementsAllPagesBothProtocols,
// one run in about 1,500). Hiding WriterTo makes net/http drain with Read,
// which a closed body answers with a clean (0, io.EOF).
type guardedHTTPClient struct{ next httpClient }

// httpClient is what the SDK clients call (their Options.HTTPClient).
type httpClient interface {
	Do(*http.Request) (*http.Response, error)
}

func (c guardedHTTPClient) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = readCloserOnly{r.Body}
	}
	return c.next.Do(r)
}

// readCloserOnly exposes only Read and Close of a body.
type readCloserOnly struct{ rc io.ReadCloser }

func (b readCloserOnly) Read(p []byte) (int, error) { return b.rc.Read(p) }
func (b readCloserOnly) Close() error               { return b.rc.Close() }

// guard wraps an SDK client's HTTP client (nil stays nil: the SDK then
// builds its default before the option functions run, so it is never nil
// here in practice).
func guard(c httpClient) httpClient {
	if c == nil {
		return nil
	}
	if _, done := c.(guardedHTTPClient); done {
		return c
	}
	return guardedHTTPClient{next: c}
}
