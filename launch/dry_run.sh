# Sourced by the pod launch scripts: `run CMD...` runs CMD, or with dry=1 prints it in a form
# that can be pasted into a shell (--key="value" where the value has spaces).
run() {
  if [ "${dry:-0}" != 1 ]; then "$@"; return; fi
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[-A-Za-z0-9_./:=@,+%]+$ ]]; then
      out+=("$a")
    elif [[ $a =~ ^(--[a-z-]+=)(.*)$ && ${BASH_REMATCH[2]} != *[\"\$\`\\]* ]]; then
      out+=("${BASH_REMATCH[1]}\"${BASH_REMATCH[2]}\"")
    else
      out+=("${a@Q}")
    fi
  done
  echo "${out[*]}"
}
