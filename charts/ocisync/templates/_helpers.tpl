{{- define "ocisync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ocisync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains (include "ocisync.name" .) .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ocisync.name" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ocisync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ocisync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ocisync.selector" -}}
app.kubernetes.io/name: {{ include "ocisync.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ocisync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ocisync.controllerSA" -}}
{{- default (printf "%s-controller" (include "ocisync.fullname" .)) .Values.serviceAccount.controller.name -}}
{{- end -}}

{{- define "ocisync.agentSA" -}}
{{- default (printf "%s-agent" (include "ocisync.fullname" .)) .Values.serviceAccount.agent.name -}}
{{- end -}}

{{- define "ocisync.controllerURL" -}}
{{- printf "http://%s-controller.%s.svc:%v" (include "ocisync.fullname" .) .Release.Namespace .Values.controller.port -}}
{{- end -}}

{{- define "ocisync.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The path of an agent.allowedDirs entry: {path, namespaces} (or a plain path string).
*/}}
{{- define "ocisync.allowedDirPath" -}}
{{- $path := . -}}
{{- if kindIs "map" . }}{{ $path = required "agent.allowedDirs entries need a path" .path }}{{ end -}}
{{- if contains "=" $path }}{{ fail (printf "agent.allowedDirs: %q: a path cannot contain '=' (it separates the path from the namespaces in --allowed-dir)" $path) }}{{ end -}}
{{ $path }}
{{- end }}

{{/*
The agent flag of an agent.allowedDirs entry, called with (list $ entry): granted to the
entry's namespaces, by default the release namespace only; ["*"] is every namespace.
*/}}
{{- define "ocisync.allowedDirFlag" -}}
{{- $root := index . 0 }}{{- $dir := index . 1 }}
{{- $ns := list $root.Release.Namespace }}
{{- if and (kindIs "map" $dir) $dir.namespaces }}{{ $ns = $dir.namespaces }}{{ end }}
{{- if has "*" $ns -}}
--allowed-dir={{ include "ocisync.allowedDirPath" $dir }}
{{- else -}}
--allowed-dir={{ include "ocisync.allowedDirPath" $dir }}={{ join "," $ns }}
{{- end }}
{{- end }}

{{/*
A byte quantity for a flag: a string as given (64Mi), a number as an integer (YAML numbers
reach templates as floats, which would render as 6.7108864e+07).
*/}}
{{- define "ocisync.quantity" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/*
The controller's pod anti-affinity across nodes: soft (preferred) or hard (required).
*/}}
{{- define "ocisync.controllerAntiAffinity" -}}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "ocisync.selector" (dict "root" . "component" "controller") | fromYaml)) -}}
{{- if eq .Values.controller.podAntiAffinity "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        {{- toYaml $term | nindent 8 }}
{{- else if eq .Values.controller.podAntiAffinity "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - {{- toYaml $term | nindent 6 }}
{{- else -}}
{{- fail (printf "controller.podAntiAffinity must be soft, hard or \"\", not %q" .Values.controller.podAntiAffinity) -}}
{{- end -}}
{{- end }}

{{/*
The PromQL label matchers that pick this release's controller metrics.
*/}}
{{- define "ocisync.alertSelector" -}}
{{- default (printf "job=%q" (printf "%s-controller" (include "ocisync.fullname" .))) .Values.prometheusRule.selector -}}
{{- end }}
