-- Argo CD health of a cellule.ai Pool (the operator's status: kstatus
-- Ready/Reconciling/Stalled, plus Degraded for tiers not served by their
-- own backend). Installed as resource.customizations.health.cellule.ai_Pool.
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

-- A status the operator has not written yet, or one about an older spec.
if obj.status == nil or obj.status.observedGeneration == nil then
  return { status = "Progressing", message = "Waiting for the operator's first status" }
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  return { status = "Progressing", message = "Waiting for the operator to observe generation " ..
    tostring(obj.metadata.generation) .. " (status is of generation " .. tostring(obj.status.observedGeneration) .. ")" }
end
-- It cannot progress until someone changes something.
if holds("Stalled") then
  return { status = "Degraded", message = says(condition("Stalled")) }
end
-- A tier served by its CPU fallback (NPU down) or by nothing.
if holds("Degraded") then
  return { status = "Degraded", message = says(condition("Degraded")) }
end
if holds("Reconciling") then
  return { status = "Progressing", message = says(condition("Reconciling")) }
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  local message = says(ready)
  if obj.status.routing ~= nil and obj.status.routing ~= "" then
    message = message .. "; routing " .. obj.status.routing
  end
  return { status = "Healthy", message = message }
end
if ready ~= nil then
  return { status = "Progressing", message = says(ready) }
end
return { status = "Progressing", message = "Waiting for the Ready condition" }
