import { useEffect, useRef } from "react";
import { formatTime } from "@/lib/format";
import type { LiveRun } from "./liveState";
import type { StreamState } from "./useLiveRun";

const STREAM_TEXT: Record<StreamState, string> = {
  connecting: "connecting",
  live: "live",
  reconnecting: "reconnecting…",
  ended: "complete",
};

/** The run's events as lines, newest at the bottom, following the stream. */
export function EventLog({ live, stream }: { live: LiveRun; stream: StreamState }) {
  const box = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  // A finished run's stream closes for good; between its last event and the gateway's
  // "nothing more" the browser briefly reconnects: that is not worth a warning.
  const shown: StreamState = ["completed", "failed", "cancelled"].includes(live.status) && stream !== "live" ? "ended" : stream;
  useEffect(() => {
    const el = box.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [live.log.length]);
  return (
    <section className="panel" aria-label="Events">
      <div className="panel-header">
        <h2>Events</h2>
        <span className="spacer" />
        <span className={`live-dot ${shown}`}>
          {STREAM_TEXT[shown]} · event {live.lastEventId}
        </span>
      </div>
      <div
        ref={box}
        className="event-log"
        role="log"
        aria-live="off"
        onScroll={(e) => {
          const el = e.currentTarget;
          stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
        }}
      >
        {live.log.length === 0 ? <div className="dim">No events yet.</div> : null}
        {live.log.map((line) => (
          <div key={line.id} className={line.tone}>
            <span className="t">{formatTime(line.time)}</span>
            {line.text}
          </div>
        ))}
      </div>
    </section>
  );
}
