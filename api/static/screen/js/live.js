// Live readings and alerts from /stream (Server-Sent Events), as two streams: alerts of every
// kind, and readings of the kind the map shows (all kinds when none is chosen), so choosing a
// kind also spares the browser and the server every other kind's readings. EventSource
// reconnects by itself (the server sends retry: 3000); onReconnect lets the screen reload the
// alerts it may have missed.

export class LiveStream {
  constructor({ onReading, onAlert, onState, onReconnect }) {
    this.onReading = onReading;
    this.onAlert = onAlert;
    this.onState = onState;
    this.onReconnect = onReconnect;
    this.readings = null;
    this.alerts = null;
    // The kind whose readings stream is subscribed ("" for all; null while connecting).
    this.following = null;
  }

  open(kind = "") {
    this.alerts = this.connect("/stream?types=alert", "alert", this.onAlert, true);
    this.follow(kind);
  }

  // Readings of `kind` only ("" for all): the readings stream is opened again with the filter.
  follow(kind) {
    if (this.readings) this.readings.close();
    this.following = null;
    const path = "/stream?types=reading" + (kind ? `&kind=${encodeURIComponent(kind)}` : "");
    this.readings = this.connect(path, "reading", this.onReading, false, () => { this.following = kind; });
  }

  connect(path, event, handler, reportReconnect, onReady = () => {}) {
    this.onState("connecting");
    const source = new EventSource(path);
    let readyOnce = false;
    source.addEventListener("ready", (e) => {
      const ready = JSON.parse(e.data);
      this.onState(ready.broker === "connected" ? "open" : "connecting");
      if (readyOnce && reportReconnect) this.onReconnect();
      readyOnce = true;
      onReady();
    });
    source.addEventListener(event, (e) => handler(JSON.parse(e.data)));
    source.addEventListener("missed", (e) => console.info("live stream %s: missed %d events", path, JSON.parse(e.data).missed));
    source.onerror = () => this.onState(source.readyState === EventSource.CLOSED ? "closed" : "connecting");
    return source;
  }
}
