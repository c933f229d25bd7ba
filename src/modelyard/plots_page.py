"""The page `dvc plots show` fills with the plots: `.dvc/plots_page.html`, Vega inlined.

DVC's own page loads Vega, Vega-Lite and vega-embed from a CDN, so on a closed network
(or offline) it opens blank. `.dvc/config` points `plots.html_template` at this page
instead: it carries the three libraries itself (the bundle vl-convert builds), so the
plots draw with no network. Nothing imports this module at run time; `make plots-page`
runs it to write the page again after a vl-convert upgrade.
"""

from __future__ import annotations

import sys
from pathlib import Path

VEGA_LITE = "5.21"  # the templates in .dvc/plots and DVC's built-in ones are Vega-Lite v5 specs
# What the bundle exposes to the page. dvc.yaml declares every plot for every task, so a
# classifier's regression and forecast plots exist with no rows (DVC passes an empty
# spec): vegaEmbed hides those instead of drawing an empty box.
GLOBALS = """
window.vega = vega;
window.vegaLite = vegaLite;
window.vegaEmbed = (target, spec, options) => {
  const values = spec && spec.data && spec.data.values;
  if (!spec || Object.keys(spec).length === 0 || (Array.isArray(values) && values.length === 0)) {
    document.querySelector(target).style.display = "none";
    return Promise.resolve(null);
  }
  return vegaEmbed(target, spec, options);
};
"""
PAGE = Path(__file__).resolve().parents[2] / ".dvc" / "plots_page.html"
# `{plot_divs}` is DVC's placeholder: each plot's <div>, whose inline script calls vegaEmbed.
TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>modelyard: DVC plots</title>
<!-- Vega {vega}, Vega-Lite {vega_lite}, vega-embed {embed} (BSD-3-Clause), bundled by vl-convert -->
<script>(() => {{ {bundle} }})();</script>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 16px; }}
  body > div {{ display: inline-block; vertical-align: top; margin: 0 24px 24px 0; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def render() -> str:
    """The page's text: TEMPLATE with the libraries' bundle inlined, inside a function so
    that only GLOBALS reach the page."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(GLOBALS, vl_version=VEGA_LITE)
    if "</script" in bundle or "{plot_divs}" in bundle:
        raise RuntimeError("the Vega bundle contains text that would end the page's script early")
    return TEMPLATE.format(
        bundle=bundle,
        vega=vl_convert.get_vega_version(),
        vega_lite=VEGA_LITE,
        embed=vl_convert.get_vega_embed_version(),
    )


def main() -> None:
    PAGE.write_text(render())
    print(f"wrote {PAGE} ({PAGE.stat().st_size // 1024} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
