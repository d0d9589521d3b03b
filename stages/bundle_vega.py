"""bundle_vega: the page template `dvc plots show` fills, with Vega, Vega-Lite and Vega-Embed inlined.

    python -m stages.bundle_vega artifacts/plots_offline.html

DVC's own page loads the three libraries from a CDN, so on a machine without internet (many
factory networks) every Vega plot renders as nothing. This writes a template (DVC's
`plots.html_template`, set in .dvc/config) that carries the JavaScript bundled by
vl-convert-python, so the page works offline. Plots render as SVG, and each plot's element
gets a `data-marks` attribute with the number of drawn data items, which the tests read to
fail on an empty plot.
"""

import argparse
from pathlib import Path

import vl_convert

from stages.lib import errors

VEGA_LITE = "5.21"  # DVC writes Vega-Lite v5 specs; the newest v5 that vl-convert bundles

# Wraps vegaEmbed: SVG output, and a count of data items (not axes or legends) once the plot is drawn.
CHECK = """
(function () {
  const embed = window.vegaEmbed;
  function count(mark) {
    let n = mark.marktype !== "group" && mark.role === "mark" ? mark.items.length : 0;
    for (const item of mark.items || []) for (const child of item.items || []) n += count(child);
    return n;
  }
  window.vegaEmbed = function (el, spec, opts) {
    const node = document.querySelector(el);
    return embed(el, spec, Object.assign({renderer: "svg"}, opts)).then(function (result) {
      node.setAttribute("data-marks", count(result.view.scenegraph().root));
      return result;
    }, function (err) {
      node.setAttribute("data-error", String(err));
      throw err;
    });
  };
})();
"""

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC plots</title>
    <!-- Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {embed}, bundled by vl-convert-python {vlc}: no CDN needed -->
    <script>{bundle}</script>
    <script>{check}</script>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def page():
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE).replace("</script", "<\\/script")
    return PAGE.format(
        bundle=bundle,
        check=CHECK,
        vega=vl_convert.get_vega_version(),
        vega_lite=VEGA_LITE,
        embed=vl_convert.get_vega_embed_version(),
        vlc=vl_convert.__version__,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="HTML template for `dvc plots show`")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(), encoding="utf8")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    errors.run(main, "bundle_vega")
