package testenv

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/mpsaas/mpsaas/emulator"
	"github.com/mpsaas/mpsaas/marketplace"
	"github.com/mpsaas/mpsaas/sqlite"
)

// Local starts the emulator with its clock frozen at start and products
// added, and opens a SQLite database in a temp dir that tells time by the
// emulator's clock. The marketplace client reaches the emulator with the
// real SDK clients and makes one attempt per call, so injected faults show.
func Local(t testing.TB, start time.Time, products ...emulator.Product) (*emulator.Server, *sqlite.DB, *marketplace.Client) {
	t.Helper()
	em := emulator.New(emulator.DefaultConfig())
	em.Clock.Set(start)
	srv := httptest.NewServer(em.Handler())
	t.Cleanup(srv.Close)
	db, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "test.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	db.Now = em.Clock.Now
	for _, p := range products {
		if _, err := em.AddProduct(p); err != nil {
			t.Fatal(err)
		}
	}
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("A", "B", ""), RetryMaxAttempts: 1}
	return em, db, marketplace.New(cfg, marketplace.Options{MeteringEndpoint: srv.URL, EntitlementEndpoint: srv.URL, AgreementEndpoint: srv.URL})
}
