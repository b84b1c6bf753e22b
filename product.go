package mpsaas

// Product is one listing's settings when a deployment sells several
// (the products file). Empty fields take the deployment-wide settings.
type Product struct {
	Code string `json:"code"`
	// Listing is the TypeOfSaaSListing: subscriptions, contracts or
	// contracts_with_subscription.
	Listing string `json:"listing,omitempty"`
	// Name is shown on the buyer pages; SignInURL is where registered
	// buyers sign in.
	Name      string `json:"name,omitempty"`
	SignInURL string `json:"signInUrl,omitempty"`
	// Dimensions are the only dimensions usage may be reported for (empty:
	// any).
	Dimensions []string `json:"dimensions,omitempty"`
	// WebhookURL receives this product's access changes instead of the
	// deployment's webhook URL (signed with the same secret).
	WebhookURL string `json:"webhookUrl,omitempty"`
	// Resource is the Agreement API's product id (prod-...), for
	// reconciliation; empty: the code.
	Resource string `json:"resource,omitempty"`
}

// Catalog holds the products of a deployment by code, with the default
// listing type of any product it does not list.
type Catalog struct {
	Products map[string]Product
	// Listing is the deployment-wide listing type.
	Listing string
}

// ListingOf returns the listing type of a product.
func (c Catalog) ListingOf(code string) string {
	if p, ok := c.Products[code]; ok && p.Listing != "" {
		return p.Listing
	}
	return c.Listing
}

// AnyContract reports whether any product of the catalog is a contract.
func (c Catalog) AnyContract() bool {
	if IsContract(c.Listing) {
		return true
	}
	for _, p := range c.Products {
		if IsContract(p.Listing) {
			return true
		}
	}
	return false
}
