{{- define "arbiterDev.labels" -}}
app.kubernetes.io/name: arbiter-dev
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "arbiterDev.selector" -}}
app.kubernetes.io/name: arbiter-dev
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The one set of development credentials, shared by the servers and the Secrets Arbiter reads. */}}
{{- define "arbiterDev.password" -}}arbiter-dev-only{{- end -}}
