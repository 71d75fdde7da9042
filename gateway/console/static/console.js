// The console's only script: keep <main> live from the page's event stream (server-sent events).
// EventSource reconnects by itself; once the server refuses the stream (logged out), reload.
"use strict";
(function () {
  const main = document.querySelector("main[data-stream]");
  if (!main) return;
  const live = document.getElementById("live");
  const say = (text, cls) => { if (live) { live.textContent = text; live.className = cls; } };
  const source = new EventSource(main.dataset.stream);
  source.addEventListener("page", (event) => {
    main.innerHTML = event.data;
    say("live", "live");
  });
  source.onopen = () => say("live", "live");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      say("offline", "offline");
      setTimeout(() => window.location.reload(), 3000);
    } else {
      say("reconnecting…", "offline");
    }
  };
})();
