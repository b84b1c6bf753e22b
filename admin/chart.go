package admin

import (
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	"github.com/mpsaas/mpsaas"
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"}

// usageChart draws a buyer's hourly usage per dimension (solid lines) and
// the quantity billed for it (dashed) from..to as an inline SVG: rendered
// on the server, no script, no external library.
func usageChart(usage []mpsaas.HourUsage, from, to time.Time) template.HTML {
	const w, h, left, right, top, bottom = 860.0, 260.0, 56.0, 150.0, 16.0, 36.0
	hours := int(to.Sub(from)/time.Hour) + 1
	if hours < 2 || len(usage) == 0 {
		return `<p class="muted" id="usage-chart-empty">No usage in these hours.</p>`
	}
	var dims []string
	var peak int64 = 1
	for _, u := range usage {
		if !slices.Contains(dims, u.Dimension) {
			dims = append(dims, u.Dimension)
		}
		peak = max(peak, u.Usage, u.Quantity)
	}
	slices.Sort(dims)
	x := func(t time.Time) float64 {
		return left + (w-left-right)*float64(t.Sub(from)/time.Hour)/float64(hours-1)
	}
	y := func(v int64) float64 { return top + (h-top-bottom)*(1-float64(v)/float64(peak)) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="usage-chart" role="img" viewBox="0 0 %.0f %.0f" width="100%%" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">`, w, h)
	fmt.Fprintf(&b, `<title>Usage and billed quantity per hour, %s to %s UTC</title>`, from.Format("2006-01-02 15:00"), to.Format("2006-01-02 15:00"))
	// Axes, gridlines and labels.
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/>`, left, h-bottom, w-right, h-bottom)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/>`, left, top, left, h-bottom)
	for _, v := range []int64{0, peak / 2, peak} {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%d</text>`, left-6, y(v)+4, v)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`, left, y(v), w-right, y(v))
	}
	for _, t := range []time.Time{from, from.Add(time.Duration(hours/2) * time.Hour), to} {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, x(t), h-bottom+16, t.Format("Jan 2 15:00"))
	}
	for i, dim := range dims {
		color := palette[i%len(palette)]
		used := make([]int64, hours)
		billed := make([]int64, hours)
		anyBilled := false
		for _, u := range usage {
			if u.Dimension != dim {
				continue
			}
			k := int(u.Hour.Sub(from) / time.Hour)
			if k < 0 || k >= hours {
				continue
			}
			used[k] += u.Usage
			if u.State == "billed" {
				billed[k] += u.Quantity
				anyBilled = true
			}
		}
		line := func(vals []int64, dash string, class string) {
			var pts []string
			for k, v := range vals {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(from.Add(time.Duration(k)*time.Hour)), y(v)))
			}
			fmt.Fprintf(&b, `<polyline class="%s" data-dimension="%s" fill="none" stroke="%s" stroke-width="1.5"%s points="%s"/>`,
				class, template.HTMLEscapeString(dim), color, dash, strings.Join(pts, " "))
		}
		line(used, "", "usage")
		if anyBilled {
			line(billed, ` stroke-dasharray="5,3"`, "billed")
		}
		ly := top + 8 + float64(i)*30
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`, w-right+10, ly, w-right+30, ly, color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s usage</text>`, w-right+34, ly+4, template.HTMLEscapeString(dim))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2" stroke-dasharray="5,3"/>`, w-right+10, ly+13, w-right+30, ly+13, color)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">billed</text>`, w-right+34, ly+17)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built above; every buyer-supplied string is escaped
}
