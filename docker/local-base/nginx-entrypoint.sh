#!/bin/sh
# What the official nginx image's entrypoint does with templates (its 20-envsubst-on-templates.sh):
# every /etc/nginx/templates/NAME.template becomes /etc/nginx/conf.d/NAME with the environment's
# variables filled in. Only variables that are set are replaced, so nginx's own $variables stay.
set -eu
if [ "${1:-}" = nginx ]; then
  template_dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
  suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
  output_dir=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
  defined=$(awk 'END { for (name in ENVIRON) printf "${%s} ", name }' </dev/null)
  for template in "$template_dir"/*"$suffix"; do
    [ -f "$template" ] || continue
    output="$output_dir/$(basename "$template" "$suffix")"
    echo "$0: $template -> $output"
    envsubst "$defined" <"$template" >"$output"
  done
fi
exec "$@"
