package dynamodb_test

import (
	"context"
	"math/rand/v2"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/smithy-go/middleware"
)

// indexLag makes global secondary index queries behave as they may on
// DynamoDB: an index is eventually consistent, so an item written a moment
// ago can be missing from it. DynamoDB Local updates its indexes at once;
// this hides each item of an index query's page with probability rate.
type indexLag struct {
	mu   sync.Mutex
	rng  *rand.Rand
	rate float64
	// Hidden counts the items hidden so far.
	Hidden int
}

func newIndexLag(seed uint64, rate float64) *indexLag {
	return &indexLag{rng: rand.New(rand.NewPCG(seed, 7)), rate: rate}
}

// option installs the lag on a client.
func (l *indexLag) option(o *ddb.Options) {
	o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
		return s.Initialize.Add(middleware.InitializeMiddlewareFunc("indexLag", func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			out, md, err := next.HandleInitialize(ctx, in)
			q, ok := in.Parameters.(*ddb.QueryInput)
			res, ok2 := out.Result.(*ddb.QueryOutput)
			if err != nil || !ok || !ok2 || aws.ToString(q.IndexName) == "" {
				return out, md, err
			}
			l.mu.Lock()
			kept := res.Items[:0]
			for _, it := range res.Items {
				if l.rng.Float64() < l.rate {
					l.Hidden++
					continue
				}
				kept = append(kept, it)
			}
			res.Items = kept
			res.Count = int32(len(kept))
			l.mu.Unlock()
			return out, md, err
		}), middleware.After)
	})
}

// stop ends the lag: every index has caught up.
func (l *indexLag) stop() {
	l.mu.Lock()
	l.rate = 0
	l.mu.Unlock()
}
