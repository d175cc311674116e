"""What `apply` tells about its work: the trace lines, the closing line, and the `--report` page.

The page holds the stages (rules fired, time, node counts), the graph's size before and after, and
a picture of the regions the run changed, drawn before and after (`picture.py`).
"""
from __future__ import annotations

import html

from gtt_rules.console import byte_unit, plain


def trace_line(application) -> str:
    """One `--trace` line: the rule, where it matched, and every node it replaced, removed, added
    and rewired (a replaced node kept its name: it is in both the removed and the created list)."""
    removed, created = application.removed, application.created
    replaced = [name for name in created if name in set(removed)]
    kept = set(replaced)
    old, new = application.removed_ops, application.created_ops

    def named(names, ops):
        return ", ".join(f"{name} ({ops[name]})" if name in ops else name for name in names)

    parts = []
    if replaced:
        parts.append("replaced " + ", ".join(
            f"{name} ({old.get(name, '?')} -> {new.get(name, '?')})" if old.get(name) != new.get(name)
            else f"{name} ({new.get(name, '?')})" for name in replaced))
    gone = [name for name in removed if name not in kept]
    if gone:
        parts.append("removed " + named(gone, old))
    made = [name for name in created if name not in kept]
    if made:
        parts.append("added " + named(made, new))
    if application.rewired:
        parts.append("rewired " + ", ".join(application.rewired))
    return plain(f"{application.location}: {application.rule} at '{application.root}': "
                 f"{'; '.join(parts) or 'no node changed'}")


def change_counts(report) -> str:
    """What a stage's rewrites did to the nodes, " (3 added, 5 removed, 2 replaced)", or ""."""
    counts = [(report.added, "added"), (report.removed, "removed"), (report.replaced, "replaced")]
    shown = [f"{count:,} {word}" for count, word in counts if count]
    return f" ({', '.join(shown)})" if shown else ""


def closing_line(output: str, nodes: tuple[int, int], sizes: tuple[int, int], seconds: float) -> str:
    """`wrote OUT: 2,217 -> 471 nodes, 95.8 -> 24.0 MB, 1.9 s`."""
    before, after = sizes
    unit, scale = byte_unit(max(before, after))     # both in one unit: 95.8 -> 0.2 MB compares at a glance
    size = f"{before:,} -> {after:,} B" if scale == 1 else f"{before / scale:.1f} -> {after / scale:.1f} {unit}"
    return plain(f"wrote {output}: {nodes[0]:,} -> {nodes[1]:,} nodes, {size}, {seconds:.1f} s")


def stages_html(reports) -> str:
    """The stages as a table: nodes before and after, what the rewrites did, rules fired, time."""
    lines = ['<h2>Stages</h2><table id="stages"><thead><tr><th>#</th><th>stage</th><th>nodes</th>'
             '<th>changes</th><th>rewrites</th><th>rules fired</th><th>ms</th><th>stopped</th></tr></thead><tbody>']
    for i, (name, report) in enumerate(reports, 1):
        fired = ", ".join(f"{html.escape(rule)} &times;{count:,}" for rule, count in sorted(report.fires.items())
                          if count)
        milliseconds = sum(report.seconds.values()) * 1000
        lines.append(f'<tr><td>{i}</td><td>{html.escape(name)}</td>'
                     f'<td class="num">{report.nodes_before:,} &rarr; {report.nodes_after:,}</td>'
                     f'<td>{html.escape(change_counts(report).strip(" ()")) or "-"}</td>'
                     f'<td class="num">{report.rewrites:,}</td><td class="wrap">{fired or "-"}</td>'
                     f'<td class="num">{milliseconds:,.1f}</td><td>{html.escape(str(report.stop_reason))}</td></tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def write_page(path: str, before, after, reports, source: str, output: str, sizes: tuple[int, int]) -> None:
    """Write the `apply --report` page: the stages, the size before and after, and the picture."""
    from gtt_rules import diff
    from gtt_rules.engine.output import write_output

    changes = diff.diff_graphs(before, after)
    page = diff.html_page(changes, source, output, sizes, before, after, title="gtt-rules apply",
                          stages=stages_html(reports)).encode("utf-8")
    write_output(path, lambda file: file.write(page))
