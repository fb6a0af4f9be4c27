{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "image-moderation.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "image-moderation.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "image-moderation.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "image-moderation.labels" -}}
helm.sh/chart: {{ include "image-moderation.chart" . }}
{{ include "image-moderation.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: image-moderation
{{- end }}

{{/* Labels that select every pod of the release (all components). */}}
{{- define "image-moderation.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-moderation.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "image-moderation.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-moderation.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "image-moderation.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The replica count the account quota is divided by: the most pipeline replicas that can run at
once (autoscaling's maximum when it is on), so the sum of the replicas' MODERATION_TPS never
exceeds rekognition.accountTps.
*/}}
{{- define "image-moderation.tpsDivisor" -}}
{{- $a := .Values.autoscaling }}
{{- if $a.keda.enabled }}{{ $a.keda.maxReplicas }}
{{- else if $a.hpa.enabled }}{{ $a.hpa.maxReplicas }}
{{- else }}{{ .Values.pipeline.replicas }}
{{- end }}
{{- end }}

{{/* MODERATION_TPS per replica, rounded down to 0.001 so the sum stays under the quota. */}}
{{- define "image-moderation.perReplicaTps" -}}
{{- $divisor := include "image-moderation.tpsDivisor" . | atoi }}
{{- if lt $divisor 1 }}
{{- fail "image-moderation: the pipeline needs at least one replica (pipeline.replicas or autoscaling max) to divide rekognition.accountTps" }}
{{- end }}
{{- $tps := divf (floor (mulf (divf .Values.rekognition.accountTps $divisor) 1000)) 1000 }}
{{- if lt $tps 0.1 }}
{{- fail (printf "image-moderation: rekognition.accountTps %v over %d replicas gives %v TPS per replica; the service needs at least 0.1" .Values.rekognition.accountTps $divisor $tps) }}
{{- end }}
{{- printf "%.3f" $tps }}
{{- end }}

{{/* Checks that span several values (JSON Schema cannot compare two values). */}}
{{- define "image-moderation.validate" -}}
{{- $v := .Values }}
{{- if and $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled }}
{{- fail "image-moderation: autoscaling.keda.enabled and autoscaling.hpa.enabled are mutually exclusive: both would drive the pipeline Deployment's replica count" }}
{{- end }}
{{- range $component := list "pipeline" "sink" "console" }}
{{- $c := index $v $component }}
{{- if or (eq $component "pipeline") $c.enabled }}
{{- if le (float64 $c.terminationGracePeriodSeconds) (float64 $v.moderation.shutdownGraceSeconds) }}
{{- fail (printf "image-moderation: %s.terminationGracePeriodSeconds (%v) must be greater than moderation.shutdownGraceSeconds (%v), or Kubernetes kills the pod before in-flight work has drained" $component $c.terminationGracePeriodSeconds $v.moderation.shutdownGraceSeconds) }}
{{- end }}
{{- end }}
{{- end }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
{{- if not $v.kafka.sasl.mechanism }}
{{- fail (printf "image-moderation: kafka.sasl.mechanism is required with kafka.securityProtocol=%s" $v.kafka.securityProtocol) }}
{{- end }}
{{- if not $v.kafka.sasl.passwordSecret.name }}
{{- fail "image-moderation: kafka.sasl.passwordSecret.name (an existing Secret) is required with SASL" }}
{{- end }}
{{- end }}
{{- if and $v.autoscaling.keda.enabled (gt (int $v.autoscaling.keda.minReplicas) (int $v.autoscaling.keda.maxReplicas)) }}
{{- fail "image-moderation: autoscaling.keda.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if and $v.autoscaling.hpa.enabled (gt (int $v.autoscaling.hpa.minReplicas) (int $v.autoscaling.hpa.maxReplicas)) }}
{{- fail "image-moderation: autoscaling.hpa.minReplicas must not exceed maxReplicas" }}
{{- end }}
{{- if gt (float64 $v.moderation.reviewThreshold) (float64 $v.moderation.rejectThreshold) }}
{{- fail "image-moderation: moderation.reviewThreshold must not exceed moderation.rejectThreshold" }}
{{- end }}
{{- end }}

{{/*
A Deployment for one component. Called with a dict: root (the chart context), component
("pipeline", "sink" or "console"), command (the CLI subcommand).
*/}}
{{- define "image-moderation.deployment" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $name := .component }}
{{- $c := index $v $name }}
{{- $autoscaled := and (eq $name "pipeline") (or $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled) }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "image-moderation.fullname" $root }}-{{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "image-moderation.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  {{- if not $autoscaled }}
  replicas: {{ $c.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with $c.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "image-moderation.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ $name }}
  template:
    metadata:
      labels:
        {{- include "image-moderation.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $name }}
        {{- with $c.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Roll the pods when their configuration changes (env is read once at start-up).
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        checksum/files: {{ include (print $root.Template.BasePath "/files-configmap.yaml") $root | sha256sum }}
        {{- with $c.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "image-moderation.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
      # Longer than moderation.shutdownGraceSeconds (checked at render): SIGTERM drains in-flight
      # work, commits and leaves the group before the kubelet's SIGKILL.
      terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $name }}
          image: {{ include "image-moderation.image" $root | quote }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args: [{{ .command | quote }}]
          ports:
            - name: metrics
              containerPort: {{ $v.metrics.port }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "image-moderation.fullname" $root }}-env
            {{- with $v.extraEnvFrom }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- $static := and $v.kafka.staticMembership (eq .command "run") }}
          {{- if or $v.kafka.sasl.usernameSecret.name $v.kafka.sasl.passwordSecret.name $v.extraEnv $static }}
          env:
            {{- if $static }}
            # Static membership: the pod's name survives container restarts.
            - name: KAFKA_GROUP_INSTANCE_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- end }}
            {{- if $v.kafka.sasl.usernameSecret.name }}
            - name: KAFKA_SASL_USERNAME
              valueFrom:
                secretKeyRef:
                  name: {{ $v.kafka.sasl.usernameSecret.name }}
                  key: {{ $v.kafka.sasl.usernameSecret.key }}
            {{- end }}
            {{- if $v.kafka.sasl.passwordSecret.name }}
            - name: KAFKA_SASL_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ $v.kafka.sasl.passwordSecret.name }}
                  key: {{ $v.kafka.sasl.passwordSecret.key }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            {{- toYaml $v.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            {{- toYaml $v.probes.readiness | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          {{- with $c.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: work
              mountPath: /app
            {{- if or $v.moderation.policy $v.review.activationConditions }}
            - name: files
              mountPath: /etc/moderation
              readOnly: true
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        # The root filesystem is read-only; the SDKs may still want a scratch /tmp.
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        # The working directory: libraries that write relative paths (faust's data directory in
        # the sink) get a writable one on the read-only root filesystem.
        - name: work
          emptyDir:
            sizeLimit: 256Mi
        {{- if or $v.moderation.policy $v.review.activationConditions }}
        - name: files
          configMap:
            name: {{ include "image-moderation.fullname" $root }}-files
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
