{{/* The release's name for its objects, at most 63 characters. */}}
{{- define "context-api.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "context-api.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "context-api.labels" -}}
{{ include "context-api.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "context-api.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "context-api.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "context-api.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "context-api.teiUrl" -}}
{{- if .Values.tei.enabled -}}
http://{{ include "context-api.fullname" . }}-tei:{{ .Values.tei.port }}
{{- else -}}
{{ .Values.embeddings.externalUrl }}
{{- end -}}
{{- end -}}

{{/* The environment every container of the API needs (the pods and the migrations Job). */}}
{{- define "context-api.env" -}}
{{- $secret := required "secrets.existingSecret: the name of a Secret holding DATABASE_URL (and REDIS_URL, API_KEYS)" .Values.secrets.existingSecret -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.databaseUrlKey }}
{{- if .Values.secrets.redisUrlKey }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.redisUrlKey }}
{{- end }}
- name: API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secrets.apiKeysKey }}
- name: EMBEDDING_PROVIDER
  value: tei
- name: EMBEDDING_SERVICE_URL
  value: {{ include "context-api.teiUrl" . | quote }}
{{- range $name, $value := .Values.config }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* A restricted securityContext (Pod Security Standards: restricted). */}}
{{- define "context-api.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "context-api.egressDns" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* An egress rule to one external service: {cidrs: [...], port: N}. */}}
{{- define "context-api.egressTo" -}}
- ports:
    - port: {{ .port }}
      protocol: TCP
  {{- with .cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end -}}
