// Shared by the status page and the drill page: the key, the API, building elements, formatting.
// Everything shown is set as text (never as HTML): paths and errors come from the nodes.
"use strict";

const HS = (() => {
  const KEY = "hotstandby-status-key";

  const key = {
    get: () => sessionStorage.getItem(KEY),
    set: (value) => sessionStorage.setItem(KEY, value),
    clear: () => sessionStorage.removeItem(KEY),
  };

  class Refused extends Error {}

  // GET a JSON route of this node with the key as the bearer header; Refused on 401.
  async function api(path) {
    const headers = { Accept: "application/json" };
    const stored = key.get();
    if (stored) headers.Authorization = "Bearer " + stored;
    const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    if (response.status === 401) throw new Refused("the key was refused");
    if (!response.ok) throw new Error("HTTP " + response.status + " from " + path);
    return response.json();
  }

  // el("td", {class: "x", "data-label": "Role"}, "text", child, ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fill(container, items) {
    container.replaceChildren(...items);
  }

  const number = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en"));

  function bytes(n) {
    if (n === null || n === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = Number(n);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? value.toFixed(0) : value.toFixed(1)) + " " + units[unit];
  }

  function seconds(s) {
    if (s === null || s === undefined) return "-";
    const v = Number(s);
    if (v < 10) return v.toFixed(1) + " s";
    if (v < 90) return v.toFixed(0) + " s";
    if (v < 5400) return Math.floor(v / 60) + " min " + String(Math.round(v % 60)).padStart(2, "0") + " s";
    return Math.floor(v / 3600) + " h " + String(Math.round((v % 3600) / 60)).padStart(2, "0") + " min";
  }

  function when(iso) {
    if (!iso) return "-";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString("en-GB", { hour12: false });
  }

  // A state as text with a coloured badge beside it: colour is never the only signal.
  function badge(text, tone) {
    return el("span", { class: "badge " + (tone || "neutral") }, text);
  }

  return { key, api, Refused, el, svg, fill, number, bytes, seconds, when, badge };
})();
