package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/mpsaas/mpsaas"
)

// maxProductsFile bounds the products file (and MPSAAS_PRODUCTS).
const maxProductsFile = 256 << 10

// productSpec is one entry of the products file, as written.
type productSpec struct {
	Code       string   `yaml:"code"`
	Listing    string   `yaml:"listing"`
	Name       string   `yaml:"name"`
	SignInURL  string   `yaml:"sign_in_url"`
	Dimensions []string `yaml:"dimensions"`
	WebhookURL string   `yaml:"webhook_url"`
	Resource   string   `yaml:"resource"`
	line       int
}

func (p *productSpec) UnmarshalYAML(n *yaml.Node) error {
	type plain productSpec
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a product is a mapping (code: ..., listing: ...)", n.Line)
	}
	// Unknown keys are mistakes (a misspelt key would silently do nothing).
	known := []string{"code", "listing", "name", "sign_in_url", "dimensions", "webhook_url", "resource"}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i].Value; !slices.Contains(known, k) {
			return fmt.Errorf("line %d: unknown key %q (known: %s)", n.Content[i].Line, k, strings.Join(known, ", "))
		}
	}
	var v plain
	if err := n.Decode(&v); err != nil {
		return err
	}
	*p = productSpec(v)
	p.line = n.Line
	return nil
}

type productsFile struct {
	Products []productSpec `yaml:"products"`
}

var productCodeRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$`)

// ParseProducts reads a products file (YAML; JSON is YAML too). Errors
// name the file and line. Each product needs a code; the other fields are
// checked like the settings they stand in for.
func ParseProducts(name string, b []byte) ([]mpsaas.Product, error) {
	if len(b) > maxProductsFile {
		return nil, fmt.Errorf("%s: %d bytes; at most %d", name, len(b), maxProductsFile)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var f productsFile
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
		return nil, fmt.Errorf("%s: %s", name, msg)
	}
	if len(f.Products) == 0 {
		return nil, fmt.Errorf("%s: no products (want a list under products:)", name)
	}
	var errs []error
	var out []mpsaas.Product
	seen := map[string]int{}
	for _, s := range f.Products {
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s line %d: %s", name, s.line, fmt.Sprintf(format, args...)))
		}
		s.Code = strings.TrimSpace(s.Code)
		switch {
		case s.Code == "":
			bad("code is required")
		case !productCodeRe.MatchString(s.Code):
			bad("code %q is not a product code", s.Code)
		case seen[s.Code] != 0:
			bad("product %s is listed twice (first on line %d)", s.Code, seen[s.Code])
		}
		seen[s.Code] = s.line
		switch s.Listing {
		case "", mpsaas.ListingSubscriptions, mpsaas.ListingContracts, mpsaas.ListingContractsWithSubscription:
		default:
			bad("listing %q: want subscriptions, contracts or contracts_with_subscription", s.Listing)
		}
		for _, u := range []struct{ key, v string }{{"sign_in_url", s.SignInURL}, {"webhook_url", s.WebhookURL}} {
			if u.v == "" {
				continue
			}
			if p, err := url.Parse(u.v); err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" {
				bad("%s %q is not an http(s) URL", u.key, u.v)
			}
		}
		for _, d := range s.Dimensions {
			if err := mpsaas.ValidateDimension(d); err != nil {
				bad("dimension %q: %s", d, mpsaas.ErrorMessage(err))
			}
		}
		if len(s.Name) > 200 {
			bad("name is longer than 200 characters")
		}
		out = append(out, mpsaas.Product{Code: s.Code, Listing: s.Listing, Name: s.Name, SignInURL: s.SignInURL, Dimensions: s.Dimensions,
			WebhookURL: s.WebhookURL, Resource: s.Resource})
	}
	return out, errors.Join(errs...)
}
