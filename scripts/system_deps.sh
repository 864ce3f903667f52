#!/usr/bin/env bash
# Installs the Debian packages the workbench uses offline, when root and missing.
# wordnet-base: Princeton WordNet 3.0 in /usr/share/wordnet (tiny-gloss-lm corpus, semantics).
# chromium: headless browser for the end-to-end report test.
set -u
need=()
[ -f /usr/share/wordnet/data.noun ] || [ -n "${WORDNET_DIR:-}" ] || need+=(wordnet-base)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || { echo "warning: apt-get install ${need[*]} failed; tests that need them will say so"; exit 0; }
else
  echo "note: missing Debian packages ${need[*]}; install them with:"
  echo "  sudo apt-get install -y --no-install-recommends ${need[*]}"
  echo "(or set WORDNET_DIR to a WordNet 3.0 dict folder). Tests needing them will fail with this hint."
fi
