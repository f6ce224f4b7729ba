{{/* The six services, in ARBITER_SERVICES order. */}}
{{- define "arbiter.serviceNames" -}}
gateway dataset annotation training inference billing
{{- end -}}

{{- define "arbiter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object names get a suffix such as `-annotation-consumer` (20 characters): keep the prefix short. */}}
{{- define "arbiter.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "arbiter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "arbiter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: arbiter
{{- end -}}

{{/* Selector labels of one workload: (dict "root" $ "component" "dataset-relay") */}}
{{- define "arbiter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "arbiter.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference from (dict "repository" "tag" "digest"), falling back to the chart image. */}}
{{- define "arbiter.imageRef" -}}
{{- $image := .root.Values.image -}}
{{- $override := default dict .image -}}
{{- $repository := default $image.repository $override.repository -}}
{{- $digest := $override.digest | default (ternary $image.digest "" (empty $override.repository)) -}}
{{- if $digest -}}
{{- printf "%s@%s" $repository $digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default (default .root.Chart.AppVersion $image.tag) $override.tag) -}}
{{- end -}}
{{- end -}}

{{- define "arbiter.image" -}}
{{- include "arbiter.imageRef" (dict "root" . "image" dict) -}}
{{- end -}}

{{- define "arbiter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "arbiter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "arbiter.trainerServiceAccountName" -}}
{{- $sa := .Values.training.trainer.serviceAccount -}}
{{- if $sa.create -}}
{{- default (printf "%s-trainer" (include "arbiter.fullname" .)) $sa.name -}}
{{- else -}}
{{- default "default" $sa.name -}}
{{- end -}}
{{- end -}}

{{- define "arbiter.configMapName" -}}
{{- printf "%s-config" (include "arbiter.fullname" .) -}}
{{- end -}}

{{- define "arbiter.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{- .Values.publicUrl | trimSuffix "/" -}}
{{- else -}}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.ingress.tls.secretName))) .Values.ingress.host -}}
{{- end -}}
{{- end -}}

{{/*
Non-secret settings shared by every Arbiter process, as JSON {name: value}. The ConfigMap carries them to the
services and the trainer Jobs; the migration hook, which runs before the ConfigMap exists, gets them inline.
*/}}
{{- define "arbiter.configEnv" -}}
{{- $root := . -}}
{{- $fullname := include "arbiter.fullname" . -}}
{{- $namespace := .Release.Namespace -}}
{{- $hosts := list "localhost" (printf ".%s.svc" $namespace) (printf ".%s.svc.%s" $namespace .Values.clusterDomain) -}}
{{- if .Values.ingress.host -}}
{{- $hosts = prepend $hosts .Values.ingress.host -}}
{{- end -}}
{{- range $service := splitList " " (include "arbiter.serviceNames" .) -}}
{{- $hosts = append $hosts (printf "%s-%s" $fullname $service) -}}
{{- end -}}
{{- $env := dict
  "ARBITER_ENV" .Values.environment
  "ARBITER_PUBLIC_URL" (include "arbiter.publicUrl" .)
  "ARBITER_ALLOWED_HOSTS" (concat $hosts .Values.allowedHosts | uniq | join ",")
  "ARBITER_CSRF_TRUSTED_ORIGINS" (include "arbiter.publicUrl" .)
  "ARBITER_LOG_LEVEL" .Values.logLevel
  "ARBITER_MAX_UPLOAD_BYTES" (printf "%d" (int64 .Values.maxUploadBytes))
  "ARBITER_BLOB_STORE" .Values.blobStore.url
  "ARBITER_TRAINING_EXECUTOR" .Values.training.executor
  "KAFKA_BOOTSTRAP_SERVERS" .Values.kafka.bootstrapServers
  "PYTHONUNBUFFERED" "1"
-}}
{{- range $name, $value := include "arbiter.kafkaEnv" . | fromJson -}}
{{- $_ := set $env $name $value -}}
{{- end -}}
{{- with .Values.database.namePrefix }}{{ $_ := set $env "ARBITER_DB_NAME" . }}{{ end -}}
{{- with .Values.blobStore.region }}{{ $_ := set $env "AWS_REGION" . }}{{ end -}}
{{- with .Values.blobStore.endpointUrl }}{{ $_ := set $env "AWS_ENDPOINT_URL_S3" . }}{{ end -}}
{{- if .Values.otel.enabled -}}
{{- $_ := set $env "OTEL_TRACES_EXPORTER" "otlp" -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" .Values.otel.endpoint -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_PROTOCOL" .Values.otel.protocol -}}
{{- $attributes := printf "k8s.namespace.name=%s" $namespace -}}
{{- with .Values.otel.resourceAttributes }}{{ $attributes = printf "%s,%s" . $attributes }}{{ end -}}
{{- $_ := set $env "OTEL_RESOURCE_ATTRIBUTES" $attributes -}}
{{- end -}}
{{- range $name, $value := .Values.extraEnv -}}
{{- $_ := set $env $name (toString $value) -}}
{{- end -}}
{{- toJson $env -}}
{{- end -}}

{{/* Where the Kafka TLS Secret is mounted in every Arbiter container. */}}
{{- define "arbiter.kafkaTlsDir" -}}/etc/arbiter/kafka-tls{{- end -}}

{{- define "arbiter.kafkaSasl" -}}
{{- if has .Values.kafka.securityProtocol (list "SASL_PLAINTEXT" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/* The Kafka TLS Secret is mounted when the protocol uses TLS and a Secret is named. */}}
{{- define "arbiter.kafkaTlsMounted" -}}
{{- $kafka := .Values.kafka -}}
{{- if and (has $kafka.securityProtocol (list "SSL" "SASL_SSL")) ($kafka.tls | default dict).existingSecret }}true{{ end -}}
{{- end -}}

{{/* KAFKA_SECURITY_PROTOCOL and the non-secret SASL and TLS settings, as JSON {name: value}. */}}
{{- define "arbiter.kafkaEnv" -}}
{{- $kafka := .Values.kafka -}}
{{- $env := dict "KAFKA_SECURITY_PROTOCOL" (default "PLAINTEXT" $kafka.securityProtocol) -}}
{{- if include "arbiter.kafkaSasl" . -}}
{{- $_ := set $env "KAFKA_SASL_MECHANISM" $kafka.sasl.mechanism -}}
{{- end -}}
{{- if include "arbiter.kafkaTlsMounted" . -}}
{{- $dir := include "arbiter.kafkaTlsDir" . -}}
{{- with $kafka.tls.caKey }}{{ $_ := set $env "KAFKA_SSL_CAFILE" (printf "%s/%s" $dir .) }}{{ end -}}
{{- with $kafka.tls.certKey }}{{ $_ := set $env "KAFKA_SSL_CERTFILE" (printf "%s/%s" $dir .) }}{{ end -}}
{{- with $kafka.tls.keyKey }}{{ $_ := set $env "KAFKA_SSL_KEYFILE" (printf "%s/%s" $dir .) }}{{ end -}}
{{- end -}}
{{- toJson $env -}}
{{- end -}}

{{/* Secret settings as JSON {name: {"secret": ..., "key": ...}}: env entries for pods, ARBITER_K8S_SECRET_ENV for trainers. */}}
{{- define "arbiter.secretRefs" -}}
{{- $refs := dict
  "DATABASE_URL" (dict "secret" .Values.database.existingSecret "key" .Values.database.urlKey)
  "ARBITER_SECRET_KEY" (dict "secret" .Values.secretKey.existingSecret "key" .Values.secretKey.key)
-}}
{{- range $service, $override := .Values.database.services -}}
{{- $_ := set $refs (printf "DATABASE_URL_%s" (upper $service)) (dict "secret" $override.existingSecret "key" (default "DATABASE_URL" $override.urlKey)) -}}
{{- end -}}
{{- with .Values.blobStore.credentials -}}
{{- if .existingSecret -}}
{{- $_ := set $refs "AWS_ACCESS_KEY_ID" (dict "secret" .existingSecret "key" .accessKeyIdKey) -}}
{{- $_ := set $refs "AWS_SECRET_ACCESS_KEY" (dict "secret" .existingSecret "key" .secretAccessKeyKey) -}}
{{- end -}}
{{- end -}}
{{- if include "arbiter.kafkaSasl" . -}}
{{- with .Values.kafka.sasl -}}
{{- $secret := required "kafka.sasl.existingSecret is required with a SASL kafka.securityProtocol" .existingSecret -}}
{{- $_ := set $refs "KAFKA_SASL_USERNAME" (dict "secret" $secret "key" .usernameKey) -}}
{{- $_ := set $refs "KAFKA_SASL_PASSWORD" (dict "secret" $secret "key" .passwordKey) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.otel.enabled .Values.otel.headers.existingSecret -}}
{{- $_ := set $refs "OTEL_EXPORTER_OTLP_HEADERS" (dict "secret" .Values.otel.headers.existingSecret "key" .Values.otel.headers.key) -}}
{{- end -}}
{{- toJson $refs -}}
{{- end -}}

{{- define "arbiter.secretEnv" -}}
{{- range $name, $ref := include "arbiter.secretRefs" . | fromJson }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secret }}
      key: {{ $ref.key }}
{{- end }}
{{- end -}}

{{/* Writable scratch space: the root filesystem is read-only. */}}
{{- define "arbiter.volumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- if include "arbiter.kafkaTlsMounted" . }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "arbiter.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /var/lib/arbiter
{{- if include "arbiter.kafkaTlsMounted" . }}
- name: kafka-tls
  mountPath: {{ include "arbiter.kafkaTlsDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
One Deployment of an Arbiter process.
(dict "root" $ "service" "dataset" "process" "web|relay|consumer|operator" "command" (list ...)
      "replicas" 1 "resources" {...} "serviceAccountName" "..." "automountToken" false "autoscaled" false
      "extraEnv" (list {...}) "placement" {nodeSelector, tolerations})
*/}}
{{- define "arbiter.deployment" -}}
{{- $root := .root -}}
{{- $component := ternary .service (printf "%s-%s" .service .process) (eq .process "web") -}}
{{- $placement := default dict .placement -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "arbiter.fullname" $root }}-{{ $component }}
  labels:
    {{- include "arbiter.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
    arbiter.io/service: {{ .service }}
    arbiter.io/process: {{ .process }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- if eq .process "operator" }}
  # Never two operators at once, even during a rollout.
  strategy:
    type: Recreate
  {{- end }}
  selector:
    matchLabels:
      {{- include "arbiter.selectorLabels" (dict "root" $root "component" $component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "arbiter.selectorLabels" (dict "root" $root "component" $component) | nindent 8 }}
        app.kubernetes.io/part-of: arbiter
        arbiter.io/service: {{ .service }}
        arbiter.io/process: {{ .process }}
      annotations:
        checksum/config: {{ include "arbiter.configEnv" $root | sha256sum }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ .serviceAccountName }}
      automountServiceAccountToken: {{ .automountToken }}
      # No KAFKA_PORT-style variables from other Services leaking into the environment.
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      {{- with (default $root.Values.nodeSelector $placement.nodeSelector) }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with (default $root.Values.tolerations $placement.tolerations) }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .process }}
          image: {{ include "arbiter.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          envFrom:
            - configMapRef:
                name: {{ include "arbiter.configMapName" $root }}
          env:
            - name: ARBITER_SERVICES
              value: {{ .service }}
            - name: OTEL_SERVICE_NAME
              value: {{ printf "arbiter-%s" $component }}
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- include "arbiter.secretEnv" $root | trim | nindent 12 }}
          {{- if eq .process "web" }}
          ports:
            - name: http
              containerPort: 8000
              protocol: TCP
          {{- $probe := dict "port" "http" "httpHeaders" (list (dict "name" "Host" "value" "localhost")) }}
          # Probes send Host: localhost, which ARBITER_ALLOWED_HOSTS always contains (a pod IP never is).
          startupProbe:
            httpGet: {{ merge (dict "path" "/healthz") $probe | toJson }}
            {{- toYaml $root.Values.probes.startup | nindent 12 }}
          readinessProbe:
            httpGet: {{ merge (dict "path" "/readyz") $probe | toJson }}
            {{- toYaml $root.Values.probes.readiness | nindent 12 }}
          livenessProbe:
            httpGet: {{ merge (dict "path" "/healthz") $probe | toJson }}
            {{- toYaml $root.Values.probes.liveness | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml .resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "arbiter.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "arbiter.volumes" $root | nindent 8 }}
{{- end -}}
