/**
 * Small React building blocks shared by the panels: state badges, error and empty
 * states, icon buttons, the metric chart, copyable text.
 */
import * as React from 'react';

import { Clipboard } from '@jupyterlab/apputils';
import { TranslationBundle } from '@jupyterlab/translation';
import { copyIcon, LabIcon } from '@jupyterlab/ui-components';

import { chartPath, IPoint } from './jobs';

export function StateBadge(props: { state: string; trans: TranslationBundle }) {
  const { state, trans } = props;
  const labels: Record<string, string> = {
    queued: trans.__('queued'),
    starting: trans.__('starting'),
    running: trans.__('running'),
    succeeded: trans.__('succeeded'),
    failed: trans.__('failed'),
    cancelled: trans.__('cancelled'),
    timed_out: trans.__('timed out'),
    lost: trans.__('lost')
  };
  return (
    <span
      className={`pai-Badge pai-Badge-${state.replace(/[^a-z_]/g, '')}`}
      data-state={state}
    >
      {labels[state] ?? state}
    </span>
  );
}

export function ErrorBox(props: { message: string; onRetry?: () => void; retryLabel?: string }) {
  if (!props.message) {
    return null;
  }
  return (
    <div className="pai-Error" role="alert">
      <span>{props.message}</span>
      {props.onRetry && (
        <button className="pai-SmallButton" onClick={props.onRetry}>
          {props.retryLabel ?? 'Retry'}
        </button>
      )}
    </div>
  );
}

export function Empty(props: { children: React.ReactNode }) {
  return <div className="pai-Empty">{props.children}</div>;
}

export function Loading(props: { label: string }) {
  return (
    <div className="pai-Loading" aria-busy="true">
      {props.label}
    </div>
  );
}

/** A small icon button with an accessible label (title + aria-label). */
export function IconButton(props: {
  icon: LabIcon;
  label: string;
  onClick: (event: React.MouseEvent) => void;
  disabled?: boolean;
  className?: string;
}) {
  return (
    <button
      type="button"
      className={`pai-IconButton ${props.className ?? ''}`}
      title={props.label}
      aria-label={props.label}
      disabled={props.disabled}
      onClick={event => {
        event.stopPropagation();
        props.onClick(event);
      }}
    >
      <props.icon.react tag="span" className="pai-IconButton-icon" />
    </button>
  );
}

/** A labelled text button in Lab's style. */
export function TextButton(props: {
  label: string;
  onClick: () => void;
  disabled?: boolean;
  accept?: boolean;
  warn?: boolean;
  icon?: LabIcon;
  title?: string;
}) {
  const kind = props.warn ? 'pai-mod-warn' : props.accept ? 'pai-mod-accept' : '';
  return (
    <button
      type="button"
      className={`pai-SmallButton ${kind}`}
      onClick={props.onClick}
      disabled={props.disabled}
      title={props.title ?? props.label}
    >
      {props.icon && <props.icon.react tag="span" className="pai-ButtonIcon" />}
      {props.label}
    </button>
  );
}

/** Text in a code box with a copy button. */
export function CopyText(props: { text: string; label: string; multiline?: boolean }) {
  return (
    <div className="pai-CopyText">
      {props.multiline ? <pre>{props.text}</pre> : <code>{props.text}</code>}
      <IconButton
        icon={copyIcon}
        label={props.label}
        onClick={() => Clipboard.copyToSystem(props.text)}
      />
    </div>
  );
}

/** One metric as a small SVG line chart by step, with its last value. */
export function MetricChart(props: { name: string; points: IPoint[] }) {
  const width = 220;
  const height = 56;
  const { points } = props;
  const last = points[points.length - 1];
  const ys = points.map(p => p.y);
  const fmt = (v: number) => (Math.abs(v) >= 1000 || Number.isInteger(v) ? String(v) : v.toPrecision(4));
  return (
    <figure className="pai-Metric" data-metric={props.name}>
      <figcaption>
        <span className="pai-Metric-name">{props.name}</span>
        <span className="pai-Metric-value">{last ? fmt(last.y) : ''}</span>
      </figcaption>
      <svg
        width={width}
        height={height}
        viewBox={`0 0 ${width} ${height}`}
        role="img"
        aria-label={`${props.name}: ${points.length} points, last ${last ? fmt(last.y) : ''}`}
      >
        <rect className="pai-Metric-frame" x={0.5} y={0.5} width={width - 1} height={height - 1} />
        <polyline className="pai-Metric-line" points={chartPath(points, width, height)} />
        {points.length <= 40 &&
          chartPath(points, width, height)
            .split(' ')
            .filter(() => points.length > 1)
            .map((pt, i) => {
              const [x, y] = pt.split(',');
              return <circle key={i} className="pai-Metric-dot" cx={x} cy={y} r={1.8} />;
            })}
      </svg>
      <div className="pai-Metric-range">
        {points.length > 1 && (
          <span>
            min {fmt(Math.min(...ys))} · max {fmt(Math.max(...ys))} · steps {points[0].x}–{last.x}
          </span>
        )}
      </div>
    </figure>
  );
}

/** A two-column key/value table. */
export function KeyValues(props: { rows: [string, React.ReactNode][]; className?: string }) {
  if (!props.rows.length) {
    return null;
  }
  return (
    <table className={`pai-KeyValues ${props.className ?? ''}`}>
      <tbody>
        {props.rows.map(([key, value]) => (
          <tr key={key}>
            <th scope="row">{key}</th>
            <td>{value}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** Subscribe to a Lumino-style signal for the component's lifetime. */
export function useSignal<T>(
  signal: { connect: (fn: (sender: any, args: T) => void) => boolean; disconnect: (fn: (sender: any, args: T) => void) => boolean },
  handler: (args: T) => void
): void {
  const ref = React.useRef(handler);
  ref.current = handler;
  React.useEffect(() => {
    const slot = (_: unknown, args: T) => ref.current(args);
    signal.connect(slot);
    return () => {
      signal.disconnect(slot);
    };
  }, [signal]);
}

/**
 * Run `tick` now and every `seconds` while mounted (and the page is visible), until
 * `enabled` turns false. The interval follows the settings.
 */
export function usePolling(tick: () => void, seconds: number, enabled = true, deps: unknown[] = []): void {
  const ref = React.useRef(tick);
  ref.current = tick;
  React.useEffect(() => {
    if (!enabled) {
      return;
    }
    ref.current();
    const handle = window.setInterval(() => {
      if (typeof document === 'undefined' || document.visibilityState !== 'hidden') {
        ref.current();
      }
    }, Math.max(1, seconds) * 1000);
    return () => window.clearInterval(handle);
  }, [seconds, enabled, ...deps]);
}
