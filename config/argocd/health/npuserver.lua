-- Argo CD health of a cellule.ai NpuServer (kstatus Ready/Reconciling/
-- Stalled, plus Healthy: enough ready pods for its tier not to fail over).
-- Installed as resource.customizations.health.cellule.ai_NpuServer.
local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local function holds(kind)
  local c = condition(kind)
  return c ~= nil and c.status == "True"
end
local function says(c)
  local reason = c.reason or c.type
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

if obj.status == nil or obj.status.observedGeneration == nil then
  return { status = "Progressing", message = "Waiting for the operator's first status" }
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  return { status = "Progressing", message = "Waiting for the operator to observe generation " ..
    tostring(obj.metadata.generation) .. " (status is of generation " .. tostring(obj.status.observedGeneration) .. ")" }
end
if holds("Stalled") then
  return { status = "Degraded", message = says(condition("Stalled")) }
end
local healthy = condition("Healthy")
if healthy ~= nil and healthy.status == "False" then
  -- Too few ready pods. A server that has been healthy since its first
  -- status is down (its tier fails over): Degraded. One that has not been
  -- healthy yet is still rolling out: Progressing while Reconciling says
  -- so. The operator moves a condition's lastTransitionTime only when its
  -- status flips, so Healthy flipped since the first status (it was True
  -- in between) when it is later than another condition's.
  local first = nil
  for _, c in ipairs(obj.status.conditions) do
    if c.type ~= "Healthy" and c.lastTransitionTime ~= nil and (first == nil or c.lastTransitionTime < first) then
      first = c.lastTransitionTime
    end
  end
  local wasHealthy = first ~= nil and healthy.lastTransitionTime ~= nil and healthy.lastTransitionTime > first
  if wasHealthy or not holds("Reconciling") then
    return { status = "Degraded", message = says(healthy) }
  end
end
if holds("Reconciling") then
  return { status = "Progressing", message = says(condition("Reconciling")) }
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = says(ready) }
end
if ready ~= nil then
  return { status = "Progressing", message = says(ready) }
end
return { status = "Progressing", message = "Waiting for the Ready condition" }
