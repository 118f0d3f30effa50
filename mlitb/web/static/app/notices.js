// What the volunteer page says when the master refuses or removes this tab: a close code
// (docs/protocol.md) turned into words a volunteer understands, with what to do. The
// worker passes {code, reason, detail}; detail is the master's own text (a ban's reason).

const TEXTS = {
  4453: {
    title: "This tab was removed from the project",
    text: "The server recomputes samples of every volunteer's work, and a result from this tab did not " +
      "match its recomputation, so it no longer accepts work from this tab. If you changed nothing, the " +
      "likely cause is a browser or graphics driver that computes inaccurately.",
    todo: "Reload this page to join again: it checks this browser's backends first, and this device's " +
      "results will be checked more often. If it happens again, open the page in another browser or add " +
      "?backend=wasm to its address, and tell the project's owner.",
  },
  4403: {
    title: "This project is private",
    text: "The link you opened has no valid volunteer key for it.",
    todo: "Ask the project's owner for the volunteer link (it ends in ?key=...).",
  },
  4404: {
    title: "There is no such project on this server",
    text: "The project may have been renamed, or the link is mistyped.",
    todo: "Check the link, or open the dashboard to see the projects this server has.",
  },
  4409: {
    title: "This page is older than the server",
    text: "The server speaks a newer protocol than this page.",
    todo: "Reload the page.",
  },
  4410: {
    title: "The project was deleted",
    text: "Its owner deleted it, so there is nothing left to train.",
    todo: "Thank you for helping. You can close this tab.",
  },
  4429: {
    title: "The project is full right now",
    text: "It takes no more volunteers at the moment (from this network or in all).",
    todo: "Keep this tab open: it tries again by itself.",
  },
};

/** {title, text, todo, detail, fatal} for a worker's notice, or null when there is none. */
export function noticeFor(n) {
  if (!n) return null;
  const t = TEXTS[n.code] || {
    title: "The server closed the connection",
    text: `It said: ${n.reason || `code ${n.code}`}.`,
    todo: "Reload the page to try again.",
  };
  return { ...t, detail: n.detail || "", fatal: n.code !== 4429 };
}

/** Show a notice in `box` (an element), or hide it (null). Text only: the master's detail is never markup. */
export function showNotice(box, n) {
  const key = n ? JSON.stringify(n) : "";
  if (box.dataset.key === key) return; // unchanged: keep it as it is (an opened <details> stays open)
  box.dataset.key = key;
  const t = noticeFor(n);
  box.hidden = !t;
  if (!t) { box.replaceChildren(); return; }
  const h = document.createElement("strong");
  h.textContent = t.title;
  const p = document.createElement("p");
  p.textContent = t.text;
  const todo = document.createElement("p");
  todo.textContent = t.todo;
  box.className = `banner ${t.fatal ? "error" : "ok"}`;
  box.replaceChildren(h, p, todo);
  if (t.detail) {
    const d = document.createElement("details");
    const s = document.createElement("summary");
    s.textContent = "The server's reason";
    const code = document.createElement("code");
    code.textContent = t.detail.slice(0, 2000);
    d.append(s, code);
    box.append(d);
  }
}
