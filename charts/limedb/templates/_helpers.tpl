{{- define "limedb.fullname" -}}
{{- printf "%s-limedb-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "limedb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "limedb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "limedb.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "limedb.labels" -}}
app.kubernetes.io/name: limedb-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "limedb.selectorLabels" -}}
app.kubernetes.io/name: limedb-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "limedb.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- join "," .Values.operator.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The operator's permissions: exactly the calls limedb_operator makes, nothing more. */}}
{{- define "limedb.rules" -}}
- apiGroups: ["limedb.io"]
  resources: ["limeclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["limedb.io"]
  resources: ["limeclusters/status"]
  verbs: ["get", "patch"]
- apiGroups: ["limedb.io"]
  resources: ["limebackups"]
  verbs: ["get", "list", "watch", "patch", "create", "delete"]
- apiGroups: ["limedb.io"]
  resources: ["limebackupschedules"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["limedb.io"]
  resources: ["limebackups/status", "limebackupschedules/status"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- /* get and delete always: a ServiceMonitor the operator made for a TLS cluster is removed
       once monitoring is turned off */}}
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
{{- if .Values.monitoring.enabled }}
  verbs: ["get", "create", "patch", "delete"]
{{- else }}
  verbs: ["get", "delete"]
{{- end }}
{{- end -}}
