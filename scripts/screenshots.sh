#!/usr/bin/env bash
# Makes the operator-view screenshots in docs/screenshots/ from a real
# gateway and agents on loopback:
#   terminal.png  `clawnode presence --watch` in tmux (captured with colours,
#                 drawn by chromium)
#   instances.png the Instances page in headless chromium (playwright-core)
#   metrics.txt   GET /metrics
# Needs tmux, /usr/bin/chromium and `npm ci --prefix tests/web`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/screenshots
mkdir -p "$out"
cargo build --quiet --locked --bin clawnode
bin=$PWD/target/debug/clawnode
work=$(mktemp -d)
pids=()
sock="clawnode-shots-$$"
cleanup() {
  tmux -L "$sock" kill-server 2>/dev/null || true
  kill "${pids[@]}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export CLAWNODE_CONFIG=/dev/null

"$bin" run --gateway --display-name gw-1 --state-dir "$work/gw" --listen 127.0.0.1:0 >"$work/gw.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q "gateway listening" "$work/gw.log" && break; sleep 0.1; done
addr=$(grep -o 'listen=[0-9.:]*' "$work/gw.log" | head -1 | cut -d= -f2)
for name in web-1 web-2 db-1 batch-7; do
  "$bin" run --url "ws://$addr" --token-file "$work/gw/gateway.token" --state-dir "$work/$name" \
    --display-name "$name" >"$work/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_${name//-/_}=$!"
done
sleep 3
# One node leaves: its row stays until the TTL, marked as left.
kill "$pid_batch_7"
sleep 2

# The terminal, as tmux shows it.
tmux -L "$sock" -f /dev/null new-session -d -x 132 -y 11 -e CLAWNODE_CONFIG=/dev/null \
  "$bin presence --watch --url ws://$addr --token-file $work/gw/operator.token"
sleep 3
tmux -L "$sock" capture-pane -p -e >"$work/screen.ansi"
python3 - "$work/screen.ansi" "$work/screen.html" <<'EOF'
import html, re, sys
text = open(sys.argv[1], encoding="utf-8").read().rstrip("\n")
colours = {"31": "#e06c75", "32": "#98c379", "33": "#e5c07b"}
out, style = [], {}
for part in re.split(r"(\x1b\[[0-9;]*m)", text):
    m = re.fullmatch(r"\x1b\[([0-9;]*)m", part)
    if not m:
        css = ";".join(f"{k}:{v}" for k, v in style.items())
        out.append(f'<span style="{css}">{html.escape(part)}</span>' if css else html.escape(part))
        continue
    for code in (m.group(1) or "0").split(";"):
        if code in ("0", ""):
            style = {}
        elif code == "1":
            style["font-weight"] = "bold"
        elif code == "2":
            style["opacity"] = "0.6"
        elif code in colours:
            style["color"] = colours[code]
        elif code == "39":
            style.pop("color", None)
open(sys.argv[2], "w", encoding="utf-8").write(
    '<!doctype html><meta charset="utf-8"><body style="margin:0;background:#1e2127">'
    '<pre style="margin:0;padding:14px 18px;color:#dcdfe4;font:14px/1.35 \'DejaVu Sans Mono\',monospace">'
    + "".join(out) + "</pre>")
EOF
chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --hide-scrollbars \
  --window-size=1140,230 --screenshot="$out/terminal.png" "file://$work/screen.html" >/dev/null 2>&1

# The browser page: the table, one row's detail open.
GATEWAY="http://$addr" TOKEN="$(cat "$work/gw/operator.token")" SHOT="$out/instances.png" \
  node --input-type=module -e '
import { chromium } from "./tests/web/node_modules/playwright-core/index.mjs";
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"] });
const page = await browser.newPage({ viewport: { width: 1500, height: 560 }, colorScheme: "light" });
await page.goto(`${process.env.GATEWAY}/#token=${encodeURIComponent(process.env.TOKEN)}`);
await page.waitForFunction(() => document.querySelectorAll("#rows tr").length >= 5);
await page.locator("#rows tr", { hasText: "web-1" }).click();
await page.waitForFunction(() => /CPUs/.test(document.querySelector("#d-stats").textContent));
await page.screenshot({ path: process.env.SHOT, fullPage: true });
await browser.close();
'

curl -sf "http://$addr/metrics" >"$out/metrics.txt"
echo "wrote $out/terminal.png $out/instances.png $out/metrics.txt"
