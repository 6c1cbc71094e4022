"""Tables (text and Markdown) and PNG charts of a load benchmark result (the JSON that run.py writes).

    python benchmarks/load/report.py benchmarks/results/load-....json [--md] [--charts]

re-renders them from a saved result.
"""

from __future__ import annotations

import json
import os
import re
import sys

SECTION = "## Load benchmarks (make bench)"
ORDER = ["imgate", "websockets", "picows", "c1", "c20", "c1mt"]


def _servers(result):
    s = result["servers"]
    return [n for n in ORDER if n in s] + [n for n in s if n not in ORDER]


def _g(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _n(v, fmt="{:,.0f}"):
    return "–" if v is None else fmt.format(v)


def _ms(us):
    return "–" if us is None else f"{us / 1000:.2f}"


def rows(result):
    """(header, rows) of the per-server table."""
    head = ["server", "fan-out deliveries/CPU-s", "fan-out CPU-us/delivery", "burst deliveries/CPU-s",
            "burst p50 / p99 ms", "idle KB/conn", "storm conns/s", "storm CPU-us/conn"]
    out = []
    for name in _servers(result):
        s = result["servers"][name]
        out.append([
            s.get("label", name) + (" (error)" if "error" in s else ""),
            _n(_g(s, "fanout", "deliveries_per_cpu_s")),
            _n(_g(s, "fanout", "server_cpu_us_per_delivery"), "{:.2f}"),
            _n(_g(s, "burst", "deliveries_per_cpu_s")),
            f"{_ms(_g(s, 'burst', 'latency', 'p50_us'))} / {_ms(_g(s, 'burst', 'latency', 'p99_us'))}",
            _n(_g(s, "idle", "kb_per_conn"), "{:.2f}"),
            _n(_g(s, "storm", "conns_per_s")),
            _n(_g(s, "storm", "server_cpu_us_per_conn")),
        ])
    return head, out


def target_rows(result):
    out = []
    for t in result["targets"]:
        v = t["value"]
        met = "n/a" if t["met"] is None else ("**met**" if t["met"] else "missed")
        out.append([t["what"], t["target"], "–" if v is None else f"{v:.2f}", met])
    return out


def unicast_results(result):
    return [(n, result["servers"][n]["unicast"]) for n in _servers(result) if _g(result, "servers", n, "unicast")]


def unicast_rows(result):
    head = ["server", "pushes", "rate/s", "delivered", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
            "p99 per round ms", "steal s", "server CPU-us/push", "HTTP reply p99 ms"]
    body = []
    for name, u in unicast_results(result):
        lat = u["latency"]
        rounds = u.get("rounds") or []
        per_round = " / ".join(_ms(_g(r, "latency", "p99_us")) for r in rounds) or "–"
        steal = f"{u['steal_s']:.2f}" if u.get("steal_s") is not None else "–"
        body.append([result["servers"][name].get("label", name), f"{u['pushes']:,}", f"{u['rate_achieved']:,.0f}",
                     f"{u['deliveries']:,}", _ms(lat.get("p50_us")), _ms(lat.get("p99_us")), _ms(lat.get("p999_us")),
                     _ms(lat.get("max_us")), per_round, steal, f"{u['server_cpu_us_per_push']:.0f}",
                     _ms(_g(u, "http_response_time", "p99_us"))])
    return head, body


def text_table(result) -> str:
    head, body = rows(result)
    lines = []
    widths = [max(len(str(r[i])) for r in [head] + body) for i in range(len(head))]
    for r in [head] + body:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    lines.append("")
    for name, u in unicast_results(result):
        lat = u["latency"]
        lines.append(f"{name} unicast: {u['pushes']:,} pushes at {u['rate_achieved']:,.0f}/s, "
                     f"{u['deliveries']:,} delivered, p50 {_ms(lat.get('p50_us'))} ms, p99 {_ms(lat.get('p99_us'))} ms, "
                     f"p99.9 {_ms(lat.get('p999_us'))} ms, max {_ms(lat.get('max_us'))} ms; "
                     f"server {u['server_cpu_us_per_push']:.0f} CPU-us/push")
    for t in target_rows(result):
        lines.append(f"  {t[3].strip('*'):<7} {t[0]}: {t[2]} (target {t[1]})")
    return "\n".join(lines)


def _md_table(head, body):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in body]
    return "\n".join(out)


def markdown(result, json_name, charts) -> str:
    m = result["machine"]
    p = result["params"]
    lines = [
        SECTION,
        "",
        f"`make bench` (benchmarks/load/; method in benchmarks/load/README.md), run {result['date']}, commit "
        f"`{result['commit']}`{' (src modified)' if result.get('src_dirty') else ''}, scale {result['scale']:g}, "
        f"{result['elapsed_s'] / 60:.1f} min. Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, shared with other work. The server and {p['generators']} "
        f"generator processes share the cores{' (server pinned to its own core)' if p.get('pinned') else ''}, so a "
        f"server's cost is its own CPU time (/proc/<pid>/task/*/schedstat, i.e. utime+stime) in its own measured "
        f"windows, its memory VmRSS; all servers are up at once and fan-out and burst are interleaved round by "
        f"round so that each sees the same machine. Raw figures: `benchmarks/results/{json_name}`.",
        "",
        f"Load: {p['room_clients']:,} WebSocket clients in one room; fan-out = {p['fanout_messages']} messages one "
        f"at a time (each sent once the previous reached every client); burst = {p['bursts']} x {p['burst_size']} "
        f"messages as {p['burst_size']} pipelined HTTP requests in one write; idle = RSS growth per connection "
        f"from 0 to {p['idle_connections']:,} authenticated connections; message body {p['body_bytes']} bytes.",
        "",
    ]
    head, body = rows(result)
    lines += [_md_table(head, body), ""]
    head, body = unicast_rows(result)
    if body:
        lines += [
            f"Unicast: one push by mid per HTTP request (imgate `POST /goim/push/mids`; the C server's "
            f"`POST /push?mid=N` as the floor of this harness on this machine), random mids over "
            f"{p['room_clients']:,} users, evenly spaced at {p.get('unicast_rate', 5000):,}/s, in "
            f"{p.get('unicast_rounds', 1)} rounds the servers take in turn"
            + (f", the driver and the server measured at nice {p['unicast_nice']}" if p.get("unicast_nice") else "")
            + "; steal = the hypervisor's "
            f"(time this VM's CPUs ran someone else's work) during the server's rounds:",
            "",
            _md_table(head, body),
            "",
        ]
    noise = []
    for name in _servers(result):
        srv = result["servers"][name]
        row = [srv.get("label", name)]
        for sc in ("fanout", "burst"):
            ph = srv.get(sc) or {}
            row.append("–" if not ph else f"{ph.get('load_cpu_s', 0):.1f} / {ph.get('other_processes_cpu_s', 0):.1f} / "
                       f"{ph.get('server_runqueue_wait_s', 0):.1f}")
        row.append(_n(_g(srv, "idle", "idle_cpu_percent"), "{:.1f}"))
        row.append(_n(_g(srv, "idle", "threads")))
        noise.append(row)
    lines += ["Conditions per server (CPU-s of the load generators+driver / of other processes on the machine / "
              "s the server waited for a core, during its own windows), idle CPU % and threads at 15,000 "
              "idle connections:", "",
              _md_table(["server", "fan-out", "burst", "idle CPU %", "threads"], noise), ""]
    r = result["ratios"]
    ratio_rows = []
    for key, what in [("fanout_vs_c1", "fan-out imgate / C 1 send per recipient"),
                      ("fanout_vs_c20", "fan-out imgate / C 20 frames per send (one frame to send: same as C 1)"),
                      ("fanout_vs_websockets", "fan-out imgate / websockets"),
                      ("fanout_vs_picows", "fan-out imgate / picows"),
                      ("burst_vs_c20", "burst imgate / C 20 frames per send"),
                      ("burst_vs_c1", "burst imgate / C 1 send per recipient"),
                      ("burst_vs_websockets", "burst imgate / websockets"),
                      ("burst_vs_picows", "burst imgate / picows")]:
        v = r.get(key)
        ratio_rows.append([what, "–" if v is None else f"{v:.2f}x"])
    lines += ["Ratios (deliveries per server CPU-second):", "", _md_table(["ratio", "value"], ratio_rows), ""]
    lines += ["Targets:", "", _md_table(["target", "wanted", "measured", ""], target_rows(result)), ""]
    if charts:
        lines += ["Charts: " + ", ".join(f"[{os.path.splitext(os.path.basename(c))[0]}](results/{os.path.basename(c)})"
                                         for c in charts), ""]
    return "\n".join(lines)


def update_results_md(path, result, json_name, charts):
    """Replace (or append) the load section of RESULTS.md; everything else in the file is kept."""
    section = markdown(result, json_name, charts)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if SECTION in text:
        start = text.index(SECTION)
        m = re.compile(r"^## ", re.M).search(text, start + len(SECTION))
        end = m.start() if m else len(text)
        text = text[:start] + section + ("\n" if m else "") + text[end:]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")


# ------------------------------------------------------------------ charts

COLORS = {"imgate": "#d62728", "websockets": "#1f77b4", "picows": "#2ca02c", "c1": "#7f7f7f", "c20": "#404040"}


def charts(result, outdir, suffix="") -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _servers(result)
    S = result["servers"]
    label = lambda n: S[n].get("label", n)  # noqa: E731
    sub = f"{result['date']}, commit {result['commit']}, scale {result['scale']:g}"
    made = []

    def save(fig, name):
        p = os.path.join(outdir, f"load-{name}{suffix}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)

    def bars(ax, key_path, ylabel, fmt="{:,.0f}"):
        xs = [n for n in names if _g(S[n], *key_path) is not None]
        vals = [_g(S[n], *key_path) for n in xs]
        b = ax.bar([label(n) for n in xs], vals, color=[COLORS.get(n, "#999") for n in xs])
        for rect, v in zip(b, vals):
            ax.annotate(fmt.format(v), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelsize=8, rotation=15)

    def cdf(ax, key):
        for n in names:
            q = _g(S[n], key, "latency", "quantiles_us")
            if not q:
                continue
            ys = [i / (len(q) - 1) for i in range(len(q))]
            ax.plot([max(v, 1) / 1000 for v in q], ys, label=label(n), color=COLORS.get(n))
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of deliveries")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)

    p = result["params"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    bars(ax[0], ("fanout", "deliveries_per_cpu_s"), "deliveries per server CPU-second")
    ax[0].set_title(f"fan-out: 1 message at a time to {p['room_clients']:,}", fontsize=10)
    cdf(ax[1], "fanout")
    ax[1].set_title("fan-out latency (push request -> client)", fontsize=10)
    fig.suptitle(sub, fontsize=8)
    save(fig, "fanout")

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    bars(ax[0], ("burst", "deliveries_per_cpu_s"), "deliveries per server CPU-second")
    ax[0].set_title(f"burst: {p['burst_size']} messages back to back to {p['room_clients']:,}", fontsize=10)
    cdf(ax[1], "burst")
    ax[1].set_title("burst latency", fontsize=10)
    fig.suptitle(sub, fontsize=8)
    save(fig, "burst")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    bars(ax, ("idle", "kb_per_conn"), "RSS growth per connection (KB)", "{:.2f}")
    ax.axhline(3.0, color="#d62728", ls="--", lw=1, label="imgate target 3 KB")
    ax.legend(fontsize=8)
    ax.set_title(f"idle memory at {p['idle_connections']:,} authenticated connections", fontsize=10)
    fig.suptitle(sub, fontsize=8)
    save(fig, "idle")

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for n in names:
        curve = _g(S[n], "storm", "curve")
        if curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label=label(n), color=COLORS.get(n))
    ax.set_xlabel("seconds")
    ax.set_ylabel("connections authenticated")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"connect storm: connect + upgrade + auth until {p['room_clients']:,} are in", fontsize=10)
    fig.suptitle(sub, fontsize=8)
    save(fig, "storm")

    u = _g(S.get("imgate", {}), "unicast")
    if u and u["latency"].get("quantiles_us"):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for n, uu in unicast_results(result):
            q = uu["latency"].get("quantiles_us")
            if q:
                ax.plot([max(v, 1) / 1000 for v in q], [i / (len(q) - 1) for i in range(len(q))],
                        color=COLORS.get(n), label=label(n) + (" (harness floor)" if n == "c1" else ""))
        ax.axvline(2.0, color="k", ls="--", lw=1, label="p99 target 2 ms")
        text = "\n".join(f"{label(n)}: p50 {_ms(uu['latency'].get('p50_us'))}, p99 {_ms(uu['latency'].get('p99_us'))}, "
                         f"p99.9 {_ms(uu['latency'].get('p999_us'))} ms" for n, uu in unicast_results(result))
        ax.text(0.02, 0.97, text, transform=ax.transAxes, fontsize=7, va="top",
                bbox=dict(boxstyle="round", fc="white", alpha=0.8))
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of pushes")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"unicast by mid at {u['rate_achieved']:,.0f}/s to {p['room_clients']:,} users", fontsize=10)
        fig.suptitle(sub, fontsize=8)
        save(fig, "unicast")
    return made


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--md", action="store_true", help="update benchmarks/RESULTS.md")
    ap.add_argument("--charts", action="store_true")
    a = ap.parse_args()
    with open(a.json) as f:
        res = json.load(f)
    print(text_table(res))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    made = charts(res, os.path.join(here, "results"), "" if res["scale"] == 1 else f"-s{res['scale']:g}") \
        if a.charts else []
    if a.md:
        update_results_md(os.path.join(here, "RESULTS.md"), res, os.path.basename(a.json), made)
    sys.exit(0)
