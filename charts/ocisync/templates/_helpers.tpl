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
