// Live readings and alerts from /stream (Server-Sent Events). EventSource reconnects by itself
// (the server sends retry: 3000); onReconnect lets the screen reload what it may have missed.

const STREAM = "/stream?types=reading,alert";

export class LiveStream {
  constructor({ onReading, onAlert, onState, onReconnect }) {
    this.onReading = onReading;
    this.onAlert = onAlert;
    this.onState = onState;
    this.onReconnect = onReconnect;
    this.readyOnce = false;
    this.source = null;
  }

  open() {
    this.onState("connecting");
    const source = (this.source = new EventSource(STREAM));
    source.addEventListener("ready", (e) => {
      const ready = JSON.parse(e.data);
      this.onState(ready.broker === "connected" ? "open" : "connecting");
      if (this.readyOnce) this.onReconnect();
      this.readyOnce = true;
    });
    source.addEventListener("reading", (e) => this.onReading(JSON.parse(e.data)));
    source.addEventListener("alert", (e) => this.onAlert(JSON.parse(e.data)));
    source.addEventListener("missed", (e) => console.info("live stream: missed %d events", JSON.parse(e.data).missed));
    source.onerror = () => this.onState(source.readyState === EventSource.CLOSED ? "closed" : "connecting");
  }
}
