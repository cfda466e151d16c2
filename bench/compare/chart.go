package main

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Chart size on the page.
const (
	chartWidth  = 24 * vg.Centimeter
	chartHeight = 12 * vg.Centimeter
	barWidth    = 0.7 * vg.Centimeter
	// legendRoom is headroom above the highest power of ten, in decades,
	// so that the legend does not cover a bar.
	legendRoom = 0.7
)

// writeChart draws throughput as grouped bars, a group per scenario and a
// bar per system (a scenario a system skipped has no bar), to path (its
// extension picks the format: .png, .svg, .pdf).
func writeChart(path string, results []result, scs []scenario, systems []string) error {
	p := plot.New()
	p.Title.Text = "Transfers per second, durable, one 2-core machine (higher is better)"
	p.Y.Label.Text = "transfers/s (log scale)"
	p.Y.Min = 0
	p.Y.Tick.Marker = plot.TickerFunc(log10Ticks)
	names := make([]string, len(scs))
	for i, sc := range scs {
		names[i] = sc.short
	}
	p.NominalX(names...)
	byKey := map[[2]string]float64{}
	for _, r := range results {
		if r.skipped == "" {
			byKey[[2]string{r.system, r.scenario}] = r.perSecond()
		}
	}
	for i, sys := range systems {
		vals := make(plotter.Values, len(scs))
		for j, sc := range scs {
			vals[j] = log10Height(byKey[[2]string{sys, sc.name}])
		}
		bars, err := plotter.NewBarChart(vals, barWidth)
		if err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		bars.LineStyle.Width = 0
		bars.Color = systemColor(i)
		bars.Offset = vg.Length(i-len(systems)/2)*barWidth + barWidth/2*vg.Length(1-len(systems)%2)
		p.Add(bars)
		p.Legend.Add(sys, bars)
	}
	p.Legend.Top = true
	p.Y.Max = math.Ceil(p.Y.Max) + legendRoom
	if err := p.Save(chartWidth, chartHeight, path); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	return nil
}

// Bars are drawn as log10 of the throughput, over a base of 1/s, because the
// batched figures are two orders of magnitude above the others (gonum's log
// scale cannot draw bars: they start at 0).
func log10Height(v float64) float64 {
	if v <= 1 {
		return 0 // skipped, or too slow to show
	}
	return math.Log10(v)
}

// log10Ticks labels the log10 axis with the powers of ten, and marks 2..9
// times each without a label.
func log10Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for k := math.Floor(lo); k <= hi; k++ {
		ticks = append(ticks, plot.Tick{Value: k, Label: thousands(math.Pow(10, k))})
		for m := 2.0; m < 10; m++ {
			if v := k + math.Log10(m); v <= hi {
				ticks = append(ticks, plot.Tick{Value: v})
			}
		}
	}
	return ticks
}

func systemColor(i int) color.Color { return plotutil.Color(i) }
