// mesh console: live pages over server-sent events, and the projections slider. No build step.
(() => {
  "use strict";
  const main = document.getElementById("main");
  const held = document.getElementById("held");
  let timer = null;
  let headListeners = [];

  const editing = () => {
    const active = document.activeElement;
    return active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  };

  // Reload the page's body (not the whole document) at most twice a second.
  const refresh = () => {
    if (timer !== null) return;
    timer = setTimeout(async () => {
      timer = null;
      if (editing()) { refresh(); return; }
      try {
        const response = await fetch(location.href, { headers: { "X-Console-Fragment": "1" } });
        const text = await response.text();
        if (text !== main.innerHTML) { main.innerHTML = text; fitFrames(); }
      } catch (error) { /* the server is gone for now: the next event tries again */ }
    }, 500);
  };

  // A timeline in an iframe grows to its content (same origin).
  const fitFrames = () => {
    for (const frame of document.querySelectorAll("iframe.timeline")) {
      const fit = () => {
        try { frame.style.height = (frame.contentDocument.documentElement.scrollHeight + 24) + "px"; } catch (error) { /* keep the default */ }
      };
      frame.addEventListener("load", fit);
      if (frame.contentDocument && frame.contentDocument.readyState === "complete") fit();
    }
  };

  const showHeld = (summary) => {
    if (!held) return;
    let text = summary.events.toLocaleString("en") + " events";
    if (summary.events) text += ` (seq ${summary.first_seq}..${summary.last_seq})`;
    held.textContent = text;
    held.dataset.lastSeq = String(summary.last_seq);
  };

  if (window.EventSource && main) {
    const stream = new EventSource("/stream");
    stream.addEventListener("mesh", (message) => {
      const summary = JSON.parse(message.data);
      showHeld(summary);
      if (main.dataset.live !== "none") refresh();
      for (const listener of headListeners) listener(summary.last_seq);
    });
    stream.addEventListener("tick", (message) => {
      showHeld(JSON.parse(message.data));
      if (main.dataset.live === "tick") refresh();
    });
    stream.addEventListener("reset", () => { if (main.dataset.live !== "none") refresh(); });
    stream.addEventListener("failure", (message) => {
      const live = document.getElementById("live");
      if (live) { live.textContent = "● " + JSON.parse(message.data).message; live.className = "live stopped"; }
    });
  }

  // The projections page: a slider over the log's positions.
  const travel = document.getElementById("travel");
  if (travel) {
    const slider = document.getElementById("at-slider");
    const number = document.getElementById("at-number");
    const key = document.getElementById("state-key");
    const follow = document.getElementById("follow-head");
    const pre = document.getElementById("state");
    const meta = document.getElementById("state-meta");
    const name = travel.dataset.projection;
    let asked = 0;
    let wait = null;
    const show = async (at) => {
      const mine = ++asked;
      const query = `at=${encodeURIComponent(at)}` + (key.value ? `&key=${encodeURIComponent(key.value)}` : "");
      const response = await fetch(`/api/projections/${encodeURIComponent(name)}?${query}`);
      const body = await response.json();
      if (mine !== asked) return; // a later position was asked meanwhile
      if (!response.ok) { meta.textContent = body.error; meta.className = "meta error"; return; }
      pre.textContent = body.text;
      meta.className = "meta";
      meta.textContent = `${body.projection} at position ${body.at}: state at seq ${body.seq}, ${body.entries} entries`;
      history.replaceState(null, "", `/projections/${encodeURIComponent(name)}?${query}`);
    };
    const soon = (at) => { clearTimeout(wait); wait = setTimeout(() => show(at), 120); };
    slider.addEventListener("input", () => { number.value = slider.value; follow.checked = false; soon(slider.value); });
    number.addEventListener("change", () => { slider.value = number.value; follow.checked = false; soon(number.value); });
    travel.addEventListener("submit", (event) => { event.preventDefault(); soon(slider.value); });
    headListeners.push((last) => {
      slider.max = String(last);
      number.max = String(last);
      if (follow.checked) { slider.value = String(last); number.value = String(last); soon(last); }
    });
  }
  fitFrames();
})();
