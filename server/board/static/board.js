// The flashstock board's page: one EventSource on /events, one snapshot per event, drawn as is.
// Ids and data-testid attributes are stable: the browser tests read them.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const charts = new Map(); // sku -> {left: uPlot, rates: uPlot}

function fmt(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
function pct(value) { return value === null || value === undefined ? "–" : fmt(value * 100, 1) + " %"; }
function secs(value) { return value === null || value === undefined ? "–" : fmt(value, 1) + " s"; }

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function figure(sku, testid, label) {
  const box = el("div", { class: "figure" });
  box.append(el("span", {}, label), el("b", { "data-testid": testid, "data-sku": sku }, "–"));
  return box;
}

function chart(target, title, series, height) {
  const width = Math.max(260, Math.min(460, target.clientWidth / 2 - 10 || 400));
  const opts = {
    title, width, height,
    scales: { x: { time: true } },
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2 }))],
    axes: [{}, { size: 60 }],
  };
  return new uPlot(opts, [[], ...series.map(() => [])], target);
}

function skuCard(sku) {
  const card = el("article", { class: "sku", "data-testid": "sku", "data-sku": sku });
  card.append(el("h3", {}, sku));
  const gauge = el("div", { class: "gauge", "data-testid": "sku-gauge", "data-sku": sku });
  gauge.append(el("div", { style: "width: 100%" }));
  const figures = el("div", { class: "figures" });
  figures.append(
    figure(sku, "sku-left", "stock left"), figure(sku, "sku-sold", "units sold"),
    figure(sku, "sku-held", "held"), figure(sku, "sku-sold-rate", "sold / s"),
    figure(sku, "sku-attempt-rate", "attempts / s"), figure(sku, "sku-pv", "attempts (PV)"),
    figure(sku, "sku-uv", "users (UV)"), figure(sku, "sku-buyers", "buyers"),
    figure(sku, "sku-conv-ok", "OK ÷ attempts"), figure(sku, "sku-conv-buyers", "buyers ÷ users"),
    figure(sku, "sku-p50", "p50 ms"), figure(sku, "sku-p99", "p99 ms"),
    figure(sku, "sku-sellout", "sell-out"), figure(sku, "sku-amount", "sales amount"),
  );
  const chartBox = el("div", { class: "charts", "data-testid": "sku-charts", "data-sku": sku, "data-points": "0" });
  const goals = el("div", { class: "goals", "data-testid": "sku-goals", "data-sku": sku });
  card.append(gauge, figures, chartBox, goals);
  $("#skus").append(card);
  charts.set(sku, {
    left: chart(chartBox, "stock left", [["left", "#2e7d32"]], 160),
    rates: chart(chartBox, "per second", [["sold/s", "#1565c0"], ["attempts/s", "#ef6c00"]], 160),
  });
  return card;
}

function setText(sku, testid, text) {
  const node = $(`[data-testid="${testid}"][data-sku="${CSS.escape(sku)}"]`);
  if (node) node.textContent = text;
}

function drawGoals(box, goals) {
  box.replaceChildren();
  const rows = [["units", "units sold"], ["buyers", "buyers"], ["sellout", "sell-out time"]];
  for (const [key, label] of rows) {
    const goal = goals[key];
    if (!goal) continue;
    const state = goal.met === true ? "met" : goal.met === false ? "missed" : "open";
    const row = el("div", { class: `goal ${state}`, "data-testid": `goal-${key}`, "data-state": state });
    const bar = el("div", { class: "bar" });
    bar.append(el("div", { style: `width: ${Math.min(100, goal.progress * 100).toFixed(1)}%` }));
    const value = key === "sellout" ? `${secs(goal.value)} / ${secs(goal.goal)}` : `${fmt(goal.value)} / ${fmt(goal.goal)}`;
    row.append(el("span", {}, label), bar, el("span", {}, value));
    box.append(row);
  }
}

function drawSku(entry) {
  const sku = entry.sku;
  const card = $(`[data-testid="sku"][data-sku="${CSS.escape(sku)}"]`) || skuCard(sku);
  const share = entry.total > 0 ? entry.left / entry.total : 0;
  const gauge = $(".gauge", card);
  gauge.firstChild.style.width = `${(share * 100).toFixed(1)}%`;
  gauge.classList.toggle("low", share > 0 && share < 0.2);
  gauge.classList.toggle("out", entry.left === 0);
  gauge.dataset.share = share.toFixed(4);
  setText(sku, "sku-left", `${fmt(entry.left)} / ${fmt(entry.total)}`);
  $(`[data-testid="sku-left"]`, card).dataset.value = entry.left;
  setText(sku, "sku-sold", fmt(entry.sold));
  setText(sku, "sku-held", fmt(entry.held));
  setText(sku, "sku-sold-rate", fmt(entry.sold_per_s, 1));
  setText(sku, "sku-attempt-rate", fmt(entry.attempts_per_s, 1));
  setText(sku, "sku-pv", fmt(entry.pv));
  setText(sku, "sku-uv", fmt(entry.uv));
  setText(sku, "sku-buyers", fmt(entry.buyers));
  setText(sku, "sku-conv-ok", pct(entry.conversion_ok_attempts));
  setText(sku, "sku-conv-buyers", pct(entry.conversion_buyers_visitors));
  setText(sku, "sku-p50", fmt(entry.p50_ms, 2));
  setText(sku, "sku-p99", fmt(entry.p99_ms, 2));
  const so = entry.sellout;
  setText(sku, "sku-sellout", so.actual_s !== null ? `sold out in ${secs(so.actual_s)}`
    : so.projected_s !== null ? `in ~${secs(so.projected_s)}` : "–");
  const amount = entry.goals.amount;
  setText(sku, "sku-amount", amount ? `${fmt(amount.minor / 100, 2)} ${amount.currency}` : "–");
  drawGoals($(".goals", card), entry.goals);

  const series = entry.series;
  const xs = series.map((p) => p[0]);
  const c = charts.get(sku);
  c.left.setData([xs, series.map((p) => p[1])]);
  c.rates.setData([xs, series.map((p) => p[2]), series.map((p) => p[3])]);
  const box = $(".charts", card);
  box.dataset.points = String(series.length);
  box.dataset.maxSoldRate = String(Math.max(0, ...series.map((p) => p[2])));
  box.dataset.maxAttemptRate = String(Math.max(0, ...series.map((p) => p[3])));
}

function drawNodes(nodes) {
  const body = $("#node-rows");
  body.replaceChildren();
  if (!nodes.length) {
    const row = el("tr", { class: "none" });
    row.append(el("td", { colspan: "5" }, "no node known"));
    body.append(row);
  }
  for (const n of nodes) {
    const row = el("tr", {
      "data-testid": "node-row", "data-node": n.id, "data-health": n.health, "data-registered": String(n.registered),
    });
    row.append(
      el("td", {}, n.id), el("td", {}, n.address), el("td", { class: "health" }, n.registered ? n.health : `${n.health} (left etcd)`),
      el("td", {}, fmt(n.rps, 1)), el("td", {}, n.owned_shards === null ? "–" : String(n.owned_shards)),
    );
    body.append(row);
  }
}

function drawAlerts(alerts) {
  const list = $("#alerts");
  list.replaceChildren();
  if (!alerts.length) list.append(el("li", { class: "none" }, "none"));
  for (const a of alerts) list.append(el("li", { "data-kind": a.kind, "data-node": a.node }, a.message));
}

function draw(snapshot) {
  const problems = $("#problems");
  problems.hidden = snapshot.problems.length === 0;
  problems.textContent = snapshot.problems.join(" · ");
  drawNodes(snapshot.nodes);
  drawAlerts(snapshot.alerts);
  $("#no-skus").hidden = snapshot.skus.length > 0;
  const shown = new Set(snapshot.skus.map((s) => s.sku));
  for (const [sku, c] of charts) {
    if (shown.has(sku)) continue;
    c.left.destroy(); c.rates.destroy(); charts.delete(sku);
    $(`[data-testid="sku"][data-sku="${CSS.escape(sku)}"]`).remove();
  }
  for (const entry of snapshot.skus) drawSku(entry);
  const clock = $("#clock");
  clock.textContent = `updated ${new Date(snapshot.at_ms).toLocaleTimeString()}`;
  clock.dataset.polls = String(snapshot.polls);
}

function connect() {
  const link = $("#link");
  const source = new EventSource("/events");
  source.onopen = () => { link.dataset.state = "live"; link.textContent = "live"; };
  source.onerror = () => { link.dataset.state = "lost"; link.textContent = "board unreachable, retrying"; };
  source.onmessage = (event) => draw(JSON.parse(event.data));
}

connect();
