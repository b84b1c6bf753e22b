package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/mpsaas/mpsaas"
)

// Entitlements asks mpsaas whether a buyer has access, and to what
// (GET /v1/entitlements). customer is a subscriber key, CustomerIdentifier
// or LicenseArn.
func (c *Client) Entitlements(ctx context.Context, customer string) (mpsaas.AccessView, error) {
	v, _, _, err := c.getEntitlements(ctx, customer, "")
	return v, err
}

// getEntitlements GETs the view; with etag set, a 304 answers notModified.
func (c *Client) getEntitlements(ctx context.Context, customer, etag string) (v mpsaas.AccessView, newETag string, notModified bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.BaseURL+"/v1/entitlements?customer="+url.QueryEscape(customer), nil)
	if err != nil {
		return v, "", false, err
	}
	req.Header.Set("Authorization", "Bearer "+c.APIKey)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	httpc := c.HTTP
	if httpc == nil {
		httpc = http.DefaultClient
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return v, "", false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return v, "", false, err
	}
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return v, etag, true, nil
	case resp.StatusCode == http.StatusOK:
		if err := json.Unmarshal(b, &v); err != nil {
			return v, "", false, fmt.Errorf("entitlements of %s: %w", customer, err)
		}
		return v, resp.Header.Get("ETag"), false, nil
	}
	return v, "", false, newError(resp.StatusCode, b)
}

// Entitled reports whether a buyer may use dimension now ("" asks about
// access alone; see mpsaas.AccessView.Entitled), from a cache that keeps
// each answer for CacheTTL (default a minute) and then revalidates it
// with its ETag. Call Invalidate when a webhook says the buyer's access
// changed, and the next call asks mpsaas again.
func (c *Client) Entitled(ctx context.Context, customer, dimension string) (bool, error) {
	v, err := c.cachedEntitlements(ctx, customer)
	if err != nil {
		return false, err
	}
	return v.Entitled(dimension, time.Now()), nil
}

// Invalidate forgets the cached answer for customer (call it from your
// webhook receiver: with the change's subscriber key, and any other form
// you ask by).
func (c *Client) Invalidate(customer string) {
	c.cacheMu.Lock()
	delete(c.cache, customer)
	c.cacheMu.Unlock()
}

// InvalidateChange forgets every cached answer about the buyer an access
// change (a webhook's body) is about.
func (c *Client) InvalidateChange(ch mpsaas.AccessChange) {
	for _, k := range []string{ch.Subscriber.Key, ch.Subscriber.CustomerIdentifier, ch.Subscriber.LicenseArn} {
		if k != "" {
			c.Invalidate(k)
		}
	}
}

type cachedView struct {
	view    mpsaas.AccessView
	etag    string
	checked time.Time
}

// maxCached bounds the cache: beyond it, the oldest answers are dropped.
const maxCached = 10000

func (c *Client) cachedEntitlements(ctx context.Context, customer string) (mpsaas.AccessView, error) {
	ttl := c.CacheTTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	c.cacheMu.Lock()
	e, ok := c.cache[customer]
	c.cacheMu.Unlock()
	if ok && time.Since(e.checked) < ttl {
		return e.view, nil
	}
	v, etag, notModified, err := c.getEntitlements(ctx, customer, e.etag)
	if err != nil {
		return v, err
	}
	if notModified {
		v, etag = e.view, e.etag
	}
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	if c.cache == nil {
		c.cache = map[string]cachedView{}
	}
	if len(c.cache) >= maxCached {
		oldest, at := "", time.Now()
		for k, x := range c.cache {
			if x.checked.Before(at) {
				oldest, at = k, x.checked
			}
		}
		delete(c.cache, oldest)
	}
	c.cache[customer] = cachedView{view: v, etag: etag, checked: time.Now()}
	return v, nil
}
