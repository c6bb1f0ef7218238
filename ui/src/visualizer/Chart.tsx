// A small uPlot line chart that redraws when its series change.

import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export function LineChart(props: { title: string; values: number[]; color: string; testid: string }) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    if (!host.current) return;
    plot.current = new uPlot(
      {
        title: props.title,
        width: 300,
        height: 120,
        scales: { x: { time: false } },
        axes: [{ size: 24 }, { size: 36 }],
        legend: { show: false },
        series: [{}, { stroke: props.color, width: 1.5, points: { show: false } }],
      },
      [[], []],
      host.current,
    );
    return () => plot.current?.destroy();
  }, []);

  useEffect(() => {
    const xs = props.values.map((_, i) => i + 1);
    plot.current?.setData([xs, props.values]);
  }, [props.values]);

  return <div class="chart" data-testid={props.testid} data-points={props.values.length} ref={host} />;
}
