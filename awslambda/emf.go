package awslambda

import (
	"encoding/json"
	"io"
	"sort"
	"time"
)

// Metrics writes CloudWatch metrics in the Embedded Metric Format: one JSON
// line per call on the function's log stream, which CloudWatch Logs turns
// into metrics with no API call and no extra permission. See
// https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
type Metrics struct {
	W         io.Writer // the log stream: os.Stdout in Lambda
	Namespace string
	// Dimensions are added to every line (e.g. Function: meter); every
	// metric is published once with all of them.
	Dimensions map[string]string
	Now        func() time.Time
}

// Put writes the counts as one EMF record.
func (m *Metrics) Put(counts map[string]int64) error {
	if m == nil || m.W == nil || len(counts) == 0 {
		return nil
	}
	now := time.Now
	if m.Now != nil {
		now = m.Now
	}
	dims := make([]string, 0, len(m.Dimensions))
	for k := range m.Dimensions {
		dims = append(dims, k)
	}
	sort.Strings(dims)
	names := make([]string, 0, len(counts))
	for k := range counts {
		names = append(names, k)
	}
	sort.Strings(names)
	type metric struct {
		Name string `json:"Name"`
		Unit string `json:"Unit"`
	}
	defs := make([]metric, len(names))
	for i, n := range names {
		defs[i] = metric{Name: n, Unit: "Count"}
	}
	rec := map[string]any{
		"_aws": map[string]any{
			"Timestamp": now().UnixMilli(),
			"CloudWatchMetrics": []any{map[string]any{
				"Namespace":  m.Namespace,
				"Dimensions": [][]string{dims},
				"Metrics":    defs,
			}},
		},
	}
	for k, v := range m.Dimensions {
		rec[k] = v
	}
	for k, v := range counts {
		rec[k] = v
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	_, err = m.W.Write(append(b, '\n'))
	return err
}
