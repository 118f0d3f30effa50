// A zoo entry's verification status as a badge (verified / failed / unverified), with
// the server's verification detail as its tooltip; plus the small formatters the zoo
// views share.
import { el } from "./api.js";

export function verificationBadge(entry) {
  const status = ["verified", "failed", "unverified"].includes(entry.verification) ? entry.verification : "unverified";
  return el("span", { class: `badge ${status}`, "data-verification": entry.verification,
    title: entry.verification_detail || "" }, entry.verification);
}

// "sha256:abcd..." -> the first 12 hex characters.
export const shortHash = (id) => String(id || "").replace(/^sha256:/, "").slice(0, 12);

export const percent = (v) => (v === null || v === undefined ? "-" : `${(100 * v).toFixed(2)}%`);

export const day = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleDateString() : "-");

export const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "-");

export function labelsText(labels, first = 5) {
  const list = labels || [];
  return list.length > first ? `${list.slice(0, first).join(", ")}, … (${list.length})` : list.join(", ");
}
