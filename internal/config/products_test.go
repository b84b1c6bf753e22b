package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const productsYAML = `# Two listings in one deployment.
products:
  - code: subs-prod
    listing: subscriptions
    name: Widgets Cloud
    sign_in_url: https://app.example.com/login
    dimensions: [users, gb]
    webhook_url: https://hooks.example.com/widgets
  - code: contract-prod
    listing: contracts_with_subscription
    name: Widgets Enterprise
    resource: prod-abc123
`

func TestParseProducts(t *testing.T) {
	ps, err := ParseProducts("products.yaml", []byte(productsYAML))
	if err != nil || len(ps) != 2 {
		t.Fatalf("ParseProducts = %+v, %v", ps, err)
	}
	if p := ps[0]; p.Code != "subs-prod" || p.Listing != "subscriptions" || p.Name != "Widgets Cloud" || strings.Join(p.Dimensions, ",") != "users,gb" ||
		p.WebhookURL != "https://hooks.example.com/widgets" || p.SignInURL != "https://app.example.com/login" {
		t.Errorf("first product = %+v", p)
	}
	if ps[1].Resource != "prod-abc123" {
		t.Errorf("second product = %+v", ps[1])
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "products:\n  - code: a\n    listng: contracts\n", `products.yaml: line 3: unknown key "listng"`},
		{"bad listing", "products:\n  - code: a\n  - code: b\n    listing: saas\n", `products.yaml line 3: listing "saas"`},
		{"no code", "products:\n  - name: x\n", "products.yaml line 2: code is required"},
		{"twice", "products:\n  - code: a\n  - code: a\n", "products.yaml line 3: product a is listed twice (first on line 2)"},
		{"bad url", "products:\n  - code: a\n    webhook_url: ftp://x\n", `line 2: webhook_url "ftp://x" is not an http(s) URL`},
		{"bad dimension", "products:\n  - code: a\n    dimensions: [\"\"]\n", `line 2: dimension ""`},
		{"not yaml", "products: [\n", "products.yaml: line 1"},
		{"wrong type", "products:\n  - code: a\n    dimensions: users\n", "products.yaml: line 3"},
		{"empty", "# nothing\n", "no products"},
		{"unknown top-level key", "product:\n  - code: a\n", "products.yaml: line 1: field product not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseProducts("products.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// FuzzParseProducts: the products file is outside input; the parser
// never panics and any file it accepts yields products with codes.
func FuzzParseProducts(f *testing.F) {
	f.Add([]byte(productsYAML))
	f.Add([]byte("products:\n  - code: a\n"))
	f.Add([]byte("{\"products\": [{\"code\": \"x\", \"dimensions\": [\"a\"]}]}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := ParseProducts("f", b)
		if err == nil {
			for _, p := range ps {
				if p.Code == "" {
					t.Fatalf("accepted a product without a code: %q", b)
				}
			}
		}
	})
}

func TestProductsFileSettings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "products.yaml")
	if err := os.WriteFile(path, []byte(productsYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, env := range map[string]map[string]string{
		"file":   {"MPSAAS_PRODUCTS_FILE": path},
		"inline": {"MPSAAS_PRODUCTS": productsYAML},
	} {
		t.Run(name, func(t *testing.T) {
			env["MPSAAS_WEBHOOK_SECRET"] = "webhook-secret-0123456789"
			env["MPSAAS_PRODUCT_CODES"] = "legacy-prod"
			var c Config
			c.LoadEnv(Serve, func(k string) string { return env[k] })
			if err := c.Validate(Serve); err != nil {
				t.Fatal(err)
			}
			if strings.Join(c.ProductCodes, ",") != "legacy-prod,subs-prod,contract-prod" {
				t.Errorf("product codes = %v", c.ProductCodes)
			}
			if c.Resources()["contract-prod"] != "prod-abc123" || c.Products["subs-prod"].Name != "Widgets Cloud" {
				t.Errorf("resources = %v, products = %v", c.Resources(), c.Products)
			}
			if !c.hasWebhooks() || c.productWebhooks()["subs-prod"] != "https://hooks.example.com/widgets" {
				t.Errorf("product webhooks = %v", c.productWebhooks())
			}
		})
	}
	var c Config
	env := map[string]string{"MPSAAS_PRODUCTS": productsYAML}
	c.LoadEnv(Serve, func(k string) string { return env[k] })
	if err := c.Validate(Serve); err == nil || !strings.Contains(err.Error(), "MPSAAS_WEBHOOK_SECRET") {
		t.Errorf("a product webhook without a secret: %v", err)
	}
	env = map[string]string{"MPSAAS_PRODUCTS": productsYAML, "MPSAAS_PRODUCTS_FILE": path}
	c = Config{}
	c.LoadEnv(Serve, func(k string) string { return env[k] })
	if err := c.Validate(Serve); err == nil || !strings.Contains(err.Error(), "set one, not both") {
		t.Errorf("both settings: %v", err)
	}
	env = map[string]string{"MPSAAS_PRODUCTS_FILE": filepath.Join(t.TempDir(), "missing.yaml")}
	c = Config{}
	c.LoadEnv(Serve, func(k string) string { return env[k] })
	if err := c.Validate(Serve); err == nil || !strings.Contains(err.Error(), "MPSAAS_PRODUCTS_FILE") {
		t.Errorf("missing file: %v", err)
	}
}

// TestProductsFileResources: MPSAAS_PRODUCT_RESOURCES wins for the codes it
// names; the file's resource ids fill in the others, including a code that
// is the end of another's.
func TestProductsFileResources(t *testing.T) {
	env := map[string]string{
		"MPSAAS_PRODUCTS":      "products:\n  - code: prod\n    resource: prod-file\n  - code: subprod\n    resource: prod-file-sub\n",
		"MPSAAS_PRODUCT_CODES": "subprod", "MPSAAS_PRODUCT_RESOURCES": "subprod=prod-env",
	}
	var c Config
	c.LoadEnv(Serve, func(k string) string { return env[k] })
	if err := c.Validate(Serve); err != nil {
		t.Fatal(err)
	}
	if r := c.Resources(); r["subprod"] != "prod-env" || r["prod"] != "prod-file" {
		t.Errorf("resources = %v, want subprod from the setting and prod from the file", r)
	}
	if c.ProductResourcesText != "subprod=prod-env" {
		t.Errorf("the setting was rewritten: %q", c.ProductResourcesText)
	}
}
