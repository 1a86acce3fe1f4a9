{{/* The release's name, for every object it makes (63 characters at most). */}}
{{- define "kybctl.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kybctl.labels" -}}
app.kubernetes.io/name: kybctl-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kybctl.selector" -}}
app.kubernetes.io/name: kybctl-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The namespaces a namespaced install watches; refuses a namespaced install without any. */}}
{{- define "kybctl.watched" -}}
{{- if eq .Values.mode "namespaced" -}}
{{- if not .Values.watchNamespaces -}}
{{- fail "mode: namespaced needs watchNamespaces (the namespaces whose KybPlatforms it reconciles)" -}}
{{- end -}}
{{- join "," .Values.watchNamespaces -}}
{{- else if ne .Values.mode "cluster" -}}
{{- fail (printf "mode must be cluster or namespaced, not %q" .Values.mode) -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects: the release's name and namespace, so releases of the same name in two
namespaces do not collide. */}}
{{- define "kybctl.clusterName" -}}
{{- printf "%s-%s" .Release.Name .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}
